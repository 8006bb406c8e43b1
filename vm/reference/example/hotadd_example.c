// SPDX-License-Identifier: GPL-2.0
/*
 * hotadd_example.c - a developer's driver, as `hotadd run --with-module` loads it beside the
 * probe. It keeps one page of state per CPU and touches the new CPU's page when that CPU comes
 * online, the way real drivers keep per-processor buffers.
 *
 * The bug it can be built to show (the one in ebpf-for-windows issue #3768): sizing the
 * per-CPU state by the CPUs *online at load* and then indexing it by the id of a CPU that was
 * hot-added later. With size_by=online the array has num_online_cpus() pages, and the first
 * hot-added CPU's id is one past its end; the array is vmalloc'd, so that page is the guard
 * page after it and the write faults at once ("BUG: unable to handle page fault", an oops
 * whose RIP names example_online+... [hotadd_example]). With size_by=possible (the default,
 * and the fix) it has nr_cpu_ids pages, one for every CPU that can ever exist.
 *
 * Records: the driver writes its own records stream in format v1 (docs/record-format.md,
 * "Streams"): each record goes to the kernel log as "hotadd-records[hotadd_example]: {json}",
 * written first thing in each callback, so the stream shows what the callback saw even when
 * it then crashes. CPUHP_BP_PREPARE_DYN startup is its "start", CPUHP_AP_ONLINE_DYN startup
 * its "complete", and a prepared CPU torn down before it came online its "failure", as in the
 * probe (vm/reference/probe/hotadd_probe.c).
 */

#define pr_fmt(fmt) "hotadd-records[" KBUILD_MODNAME "]: " fmt

#include <linux/cpu.h>
#include <linux/cpuhotplug.h>
#include <linux/cpumask.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/threads.h>
#include <linux/vmalloc.h>

#define STATUS_UNSUCCESSFUL 0xC0000001

static char *size_by = "possible";
module_param(size_by, charp, 0444);
MODULE_PARM_DESC(size_by, "size the per-CPU state by 'possible' CPUs (correct) or 'online' CPUs at load (the bug)");

static DEFINE_SPINLOCK(record_lock);
static u32 record_seq;	 /* guarded by record_lock */
static u64 load_ns;
static bool registering; /* inside the register call: callbacks are the replay */
static bool deregistering;
static int prepare_state = -1;
static int online_state = -1;
static u8 *state;		   /* state_cpus pages, one per CPU id below state_cpus */
static unsigned int state_cpus;
static DECLARE_BITMAP(prepared, NR_CPUS); /* prepared and not yet online */

/* One record: seq and t_ns assigned under the lock, so log order is seq order. */
static void record(const char *fmt, ...)
{
	char body[200];
	unsigned long irqflags;
	va_list ap;
	u32 seq;
	u64 t;

	va_start(ap, fmt);
	vscnprintf(body, sizeof(body), fmt, ap);
	va_end(ap);
	spin_lock_irqsave(&record_lock, irqflags);
	seq = ++record_seq;
	t = ktime_get_ns() - load_ns;
	pr_info("{\"v\":1,\"seq\":%u,\"t_ns\":%llu,%s}\n", seq, t, body);
	spin_unlock_irqrestore(&record_lock, irqflags);
}

static void notify(const char *st, unsigned int cpu, u32 status)
{
	record("\"kind\":\"notify\",\"state\":\"%s\",\"phase\":\"%s\",\"nt_number\":%u,"
	       "\"group\":0,\"number\":%u,\"status\":%u,\"op_status\":0,\"op_status_in\":0,"
	       "\"active_count\":%u,\"irql\":0",
	       st, READ_ONCE(registering) ? "replay" : "hotadd", cpu, cpu, status,
	       num_online_cpus());
}

static int example_prepare(unsigned int cpu)
{
	notify("start", cpu, 0);
	set_bit(cpu, prepared);
	return 0;
}

static int example_prepare_teardown(unsigned int cpu)
{
	if (test_and_clear_bit(cpu, prepared) && !READ_ONCE(deregistering))
		notify("failure", cpu, STATUS_UNSUCCESSFUL);
	return 0;
}

/* The new CPU is online: record it, then reset its page of state. The bug is here. */
static int example_online(unsigned int cpu)
{
	notify("complete", cpu, 0);
	clear_bit(cpu, prepared);
	memset(state + (size_t)cpu * PAGE_SIZE, 0, PAGE_SIZE);
	return 0;
}

static int __init example_init(void)
{
	int ret;

	if (strcmp(size_by, "possible") && strcmp(size_by, "online")) {
		pr_err("size_by=%s: give 'possible' or 'online'\n", size_by);
		return -EINVAL;
	}
	load_ns = ktime_get_ns();
	state_cpus = strcmp(size_by, "online") ? nr_cpu_ids : num_online_cpus();
	state = vzalloc((size_t)state_cpus * PAGE_SIZE);
	if (!state)
		return -ENOMEM;
	record("\"kind\":\"driver\",\"event\":\"load\",\"active_count\":%u,\"flags\":1,"
	       "\"size_by\":\"%s\",\"state_cpus\":%u", num_online_cpus(), size_by, state_cpus);

	cpus_read_lock();
	WRITE_ONCE(registering, true);
	ret = cpuhp_setup_state_cpuslocked(CPUHP_BP_PREPARE_DYN, "hotadd_example:prepare",
					   example_prepare, example_prepare_teardown);
	if (ret >= 0) {
		prepare_state = ret;
		ret = cpuhp_setup_state_cpuslocked(CPUHP_AP_ONLINE_DYN, "hotadd_example:online",
						   example_online, NULL);
		if (ret < 0) {
			WRITE_ONCE(deregistering, true);
			__cpuhp_remove_state_cpuslocked(prepare_state, true);
			WRITE_ONCE(deregistering, false);
		} else {
			online_state = ret;
		}
	}
	WRITE_ONCE(registering, false);
	cpus_read_unlock();
	if (ret < 0) {
		record("\"kind\":\"driver\",\"event\":\"register_failed\",\"status\":%u",
		       STATUS_UNSUCCESSFUL);
		record("\"kind\":\"driver\",\"event\":\"unload\"");
		vfree(state);
		return ret;
	}
	record("\"kind\":\"driver\",\"event\":\"registered\"");
	return 0;
}

static void __exit example_exit(void)
{
	WRITE_ONCE(deregistering, true);
	cpuhp_remove_state(online_state);
	cpuhp_remove_state(prepare_state);
	record("\"kind\":\"driver\",\"event\":\"deregistered\"");
	record("\"kind\":\"driver\",\"event\":\"unload\"");
	vfree(state);
}

module_init(example_init);
module_exit(example_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("hotadd project");
MODULE_DESCRIPTION("Example developer module for hotadd --with-module (buggy with size_by=online)");
