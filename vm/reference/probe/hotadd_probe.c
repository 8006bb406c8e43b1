// SPDX-License-Identifier: GPL-2.0
/*
 * hotadd_probe.c - the reference guest's CPU-hotplug probe.
 *
 * Environment: Linux 6.1 kernel module (Debian linux-image-*-amd64), loaded with insmod in the
 * reference guest. It is the Linux analogue of the Windows probe driver's
 * KeRegisterProcessorChangeCallback(..., KE_PROCESSOR_CHANGE_ADD_EXISTING): two dynamic
 * CPU-hotplug states whose callbacks write notification records in format v1
 * (docs/record-format.md):
 *
 *   CPUHP_BP_PREPARE_DYN startup   -> notify "start"    (control CPU, before the new CPU boots)
 *   CPUHP_AP_ONLINE_DYN  startup   -> notify "complete" (on the new CPU, once it schedules)
 *   CPUHP_BP_PREPARE_DYN teardown of a CPU that was prepared but never completed (rollback)
 *                                  -> notify "failure"
 *
 * Records are kept in a fixed buffer readable at /proc/hotadd_probe/records (JSON Lines) and
 * /proc/hotadd_probe/clock gives the records' clock now (ns since load); each record is also
 * printk'd as "hotadd-probe: {json}" so the serial log keeps them if the guest
 * dies. Differences from Windows are listed in vm/reference/README.md.
 *
 * Parameters: flags=1 replays the CPUs already online (ADD_EXISTING), flags=0 registers
 * without replay; veto_cpu=N fails the prepare stage of CPU N with -veto_errno.
 * fault=lockup|hang|oops|panic with fault_cpu=N injects that fault into CPU N's hot-add
 * "start" (for the harness's health-watch tests; never in a normal run).
 */

#define pr_fmt(fmt) "hotadd-probe: " fmt

#include <linux/cpu.h>
#include <linux/cpuhotplug.h>
#include <linux/cpumask.h>
#include <linux/err.h>
#include <linux/errno.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/preempt.h>
#include <linux/proc_fs.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/threads.h>

#define PROBE_FLAG_ADD_EXISTING 1
#define PROBE_MAX_RECORDS 4096
#define PROBE_JSON_MAX 256
#define STATUS_UNSUCCESSFUL 0xC0000001

static int veto_cpu = -1;
module_param(veto_cpu, int, 0444);
MODULE_PARM_DESC(veto_cpu, "CPU whose prepare stage is vetoed (-1: none)");

static int veto_errno = ENOMEM;
module_param(veto_errno, int, 0444);
MODULE_PARM_DESC(veto_errno, "positive errno returned by the vetoed prepare stage (default ENOMEM)");

static int flags = PROBE_FLAG_ADD_EXISTING;
module_param(flags, int, 0444);
MODULE_PARM_DESC(flags, "1: replay CPUs already online at registration (ADD_EXISTING); 0: no replay");

static char *fault = "none";
module_param(fault, charp, 0444);
MODULE_PARM_DESC(fault, "fault injected into fault_cpu's hot-add start: none, lockup, hang, oops, panic");

static int fault_cpu = -1;
module_param(fault_cpu, int, 0444);
MODULE_PARM_DESC(fault_cpu, "CPU whose hot-add start gets the fault (-1: none)");

/* Read through a volatile pointer so the compiler keeps the faulting access. */
static unsigned long fault_address;

enum record_kind { KIND_DRIVER, KIND_NOTIFY };
enum driver_event { EV_LOAD, EV_REGISTERED, EV_REGISTER_FAILED, EV_DEREGISTERED, EV_UNLOAD };
enum notify_state { ST_START, ST_COMPLETE, ST_FAILURE };
enum notify_phase { PH_REPLAY, PH_HOTADD };

static const char *const event_names[] = {
	[EV_LOAD] = "load",
	[EV_REGISTERED] = "registered",
	[EV_REGISTER_FAILED] = "register_failed",
	[EV_DEREGISTERED] = "deregistered",
	[EV_UNLOAD] = "unload",
};
static const char *const state_names[] = {
	[ST_START] = "start",
	[ST_COMPLETE] = "complete",
	[ST_FAILURE] = "failure",
};
static const char *const phase_names[] = {
	[PH_REPLAY] = "replay",
	[PH_HOTADD] = "hotadd",
};

struct probe_record {
	u32 seq;
	u64 t_ns;
	enum record_kind kind;
	int what; /* enum driver_event or enum notify_state */
	enum notify_phase phase;
	unsigned int cpu;
	u32 status;
	u32 op_status;
	unsigned int active_count;
	u32 flags;
};

/* Where each CPU stands as far as this probe has seen; decides what a teardown means. */
enum cpu_track { TRACK_NONE, TRACK_PREPARED, TRACK_ONLINE, TRACK_GOING_DOWN };

static DEFINE_SPINLOCK(records_lock);
static struct probe_record records[PROBE_MAX_RECORDS]; /* guarded by records_lock */
static unsigned int record_count;                      /* guarded by records_lock */
static unsigned int records_dropped;                   /* guarded by records_lock */
static enum cpu_track cpu_track[NR_CPUS];              /* guarded by records_lock */
static u64 load_ns;

static bool registering;   /* inside the register call: callbacks are the replay */
static bool deregistering; /* inside cpuhp_remove_state: teardowns are not notifications */
static bool registered;
static u32 last_veto_status;
static int prepare_state = -1;
static int online_state = -1;
static struct proc_dir_entry *proc_dir;

/*
 * The Linux error a callback returns, as the NTSTATUS a Windows driver would put in
 * *OperationStatus (unsigned 32-bit). Documented in vm/reference/README.md.
 */
static u32 errno_to_ntstatus(int err)
{
	switch (err < 0 ? -err : err) {
	case ENOMEM:
		return 0xC000009A; /* STATUS_INSUFFICIENT_RESOURCES */
	case EIO:
		return 0xC0000185; /* STATUS_IO_DEVICE_ERROR */
	case EINVAL:
		return 0xC000000D; /* STATUS_INVALID_PARAMETER */
	case EPERM:
	case EACCES:
		return 0xC0000022; /* STATUS_ACCESS_DENIED */
	case ENODEV:
		return 0xC000000E; /* STATUS_NO_SUCH_DEVICE */
	case EBUSY:
		return 0xC00000AE; /* STATUS_PIPE_BUSY, the nearest "busy" error status */
	case ETIMEDOUT:
		return 0xC00000B5; /* STATUS_IO_TIMEOUT */
	case EOPNOTSUPP:
		return 0xC00000BB; /* STATUS_NOT_SUPPORTED */
	case ENOSPC:
		return 0xC000007F; /* STATUS_DISK_FULL (no free dynamic hotplug state) */
	default:
		return STATUS_UNSUCCESSFUL;
	}
}

/* Format one record as a JSON object (no newline). Any context. Returns the length. */
static int format_record(char *buf, size_t len, const struct probe_record *r)
{
	if (r->kind == KIND_DRIVER) {
		int n = scnprintf(buf, len,
				  "{\"v\":1,\"seq\":%u,\"t_ns\":%llu,\"kind\":\"driver\",\"event\":\"%s\"",
				  r->seq, r->t_ns, event_names[r->what]);
		if (r->what == EV_LOAD)
			n += scnprintf(buf + n, len - n, ",\"active_count\":%u,\"flags\":%u",
				       r->active_count, r->flags);
		else if (r->what == EV_REGISTER_FAILED)
			n += scnprintf(buf + n, len - n, ",\"status\":%u", r->status);
		n += scnprintf(buf + n, len - n, "}");
		return n;
	}
	/* op_status is the probe's own veto (0 unless it vetoed); op_status_in, the value found on
	 * entry, is always 0: a cpuhp callback has no *OperationStatus to inherit. */
	return scnprintf(buf, len,
			 "{\"v\":1,\"seq\":%u,\"t_ns\":%llu,\"kind\":\"notify\",\"state\":\"%s\","
			 "\"phase\":\"%s\",\"nt_number\":%u,\"group\":0,\"number\":%u,"
			 "\"status\":%u,\"op_status\":%u,\"op_status_in\":0,\"active_count\":%u,"
			 "\"irql\":0}",
			 r->seq, r->t_ns, state_names[r->what], phase_names[r->phase], r->cpu,
			 r->cpu, r->status, r->op_status, r->active_count);
}

/*
 * Append a record (seq and t_ns assigned under the lock, so buffer order is seq order) and
 * printk it. Process context (every caller here may sleep; the lock is a spinlock anyway so
 * the buffer stays safe whatever context a future caller has).
 */
static void add_record(struct probe_record *r)
{
	char json[PROBE_JSON_MAX];
	unsigned long irqflags;
	bool stored = false;

	spin_lock_irqsave(&records_lock, irqflags);
	if (record_count < PROBE_MAX_RECORDS) {
		r->seq = record_count + 1;
		r->t_ns = ktime_get_ns() - load_ns;
		records[record_count++] = *r;
		stored = true;
	} else {
		records_dropped++;
	}
	spin_unlock_irqrestore(&records_lock, irqflags);

	if (stored) {
		format_record(json, sizeof(json), r);
		pr_info("%s\n", json);
	} else {
		pr_err("record buffer full (%d records): record dropped\n", PROBE_MAX_RECORDS);
	}
}

static void driver_record(enum driver_event ev, u32 status)
{
	struct probe_record r = {
		.kind = KIND_DRIVER,
		.what = ev,
		.status = status,
		.active_count = num_online_cpus(),
		.flags = (u32)flags,
	};

	add_record(&r);
}

static void notify_record(enum notify_state st, unsigned int cpu, u32 status, u32 op_status)
{
	struct probe_record r = {
		.kind = KIND_NOTIFY,
		.what = st,
		.phase = READ_ONCE(registering) ? PH_REPLAY : PH_HOTADD,
		.cpu = cpu,
		.status = status,
		.op_status = op_status,
		.active_count = num_online_cpus(),
	};

	add_record(&r);
}

static void set_track(unsigned int cpu, enum cpu_track t)
{
	unsigned long irqflags;

	spin_lock_irqsave(&records_lock, irqflags);
	cpu_track[cpu] = t;
	spin_unlock_irqrestore(&records_lock, irqflags);
}

static enum cpu_track get_track(unsigned int cpu)
{
	unsigned long irqflags;
	enum cpu_track t;

	spin_lock_irqsave(&records_lock, irqflags);
	t = cpu_track[cpu];
	spin_unlock_irqrestore(&records_lock, irqflags);
	return t;
}

/*
 * A real fault for the harness's health watch, in the hot-add path (never the replay):
 * "lockup" spins with preemption off (soft lockup), "hang" sleeps uninterruptibly forever
 * (hung task), "oops" dereferences NULL, "panic" panics. Returns only for "none"/other CPUs.
 */
static void inject_fault(unsigned int cpu)
{
	if ((int)cpu != fault_cpu || READ_ONCE(registering) || !strcmp(fault, "none"))
		return;
	pr_warn("injecting fault '%s' into cpu%u's start\n", fault, cpu);
	if (!strcmp(fault, "lockup")) {
		preempt_disable();
		for (;;)
			cpu_relax();
	} else if (!strcmp(fault, "hang")) {
		for (;;) {
			set_current_state(TASK_UNINTERRUPTIBLE);
			schedule();
		}
	} else if (!strcmp(fault, "oops")) {
		pr_warn("value %d\n", *(volatile int *)fault_address);
	} else if (!strcmp(fault, "panic")) {
		panic("hotadd-probe: injected panic in cpu%u's start", cpu);
	} else {
		pr_warn("unknown fault '%s': none injected\n", fault);
	}
}

/*
 * CPUHP_BP_PREPARE_DYN startup: "start". Runs in process context on the control CPU before
 * @cpu boots (or in the register call, for the replay). Returns 0, or -veto_errno to veto.
 * Linux does not call this state's teardown for the CPU it vetoed, so a vetoed hot-add gets
 * its "failure" here; a vetoed replay start gets none (as on Windows).
 */
static int probe_prepare_startup(unsigned int cpu)
{
	u32 veto;

	if ((int)cpu != veto_cpu) {
		notify_record(ST_START, cpu, 0, 0);
		set_track(cpu, TRACK_PREPARED);
		inject_fault(cpu);
		return 0;
	}
	veto = errno_to_ntstatus(veto_errno);
	WRITE_ONCE(last_veto_status, veto);
	notify_record(ST_START, cpu, 0, veto);
	if (!READ_ONCE(registering))
		notify_record(ST_FAILURE, cpu, veto, 0);
	set_track(cpu, TRACK_NONE);
	return -veto_errno;
}

/*
 * CPUHP_BP_PREPARE_DYN teardown. Process context, control CPU. A CPU that was prepared but
 * never completed is being rolled back: "failure", with the veto's status when our own replay
 * veto caused it, else STATUS_UNSUCCESSFUL (a later hotplug state failed; Linux gives no
 * reason). An offlined CPU and deregistration are not notifications (Windows has neither).
 * Always returns 0.
 */
static int probe_prepare_teardown(unsigned int cpu)
{
	enum cpu_track t = get_track(cpu);

	set_track(cpu, TRACK_NONE);
	if (READ_ONCE(deregistering))
		return 0;
	if (t == TRACK_PREPARED)
		notify_record(ST_FAILURE, cpu,
			      READ_ONCE(registering) ? READ_ONCE(last_veto_status) :
						       STATUS_UNSUCCESSFUL,
			      0);
	else if (t == TRACK_GOING_DOWN)
		pr_info("cpu%u went offline (not a notification)\n", cpu);
	return 0;
}

/* CPUHP_AP_ONLINE_DYN startup: "complete". Runs on @cpu's hotplug thread. Returns 0. */
static int probe_online_startup(unsigned int cpu)
{
	notify_record(ST_COMPLETE, cpu, 0, 0);
	set_track(cpu, TRACK_ONLINE);
	return 0;
}

/* CPUHP_AP_ONLINE_DYN teardown: @cpu is going offline (or deregistration). Returns 0. */
static int probe_online_teardown(unsigned int cpu)
{
	set_track(cpu, TRACK_GOING_DOWN);
	return 0;
}

/* seq_file iteration over the records; the buffer only grows, each record copied under lock. */
static void *records_start(struct seq_file *m, loff_t *pos)
{
	unsigned long irqflags;
	unsigned int count;

	spin_lock_irqsave(&records_lock, irqflags);
	count = record_count;
	spin_unlock_irqrestore(&records_lock, irqflags);
	return *pos < count ? pos : NULL;
}

static void *records_next(struct seq_file *m, void *v, loff_t *pos)
{
	++*pos;
	return records_start(m, pos);
}

static void records_stop(struct seq_file *m, void *v)
{
}

static int records_show(struct seq_file *m, void *v)
{
	struct probe_record r;
	char json[PROBE_JSON_MAX];
	unsigned long irqflags;

	spin_lock_irqsave(&records_lock, irqflags);
	r = records[*(loff_t *)v];
	spin_unlock_irqrestore(&records_lock, irqflags);
	format_record(json, sizeof(json), &r);
	seq_printf(m, "%s\n", json);
	return 0;
}

static const struct seq_operations records_seq_ops = {
	.start = records_start,
	.next = records_next,
	.stop = records_stop,
	.show = records_show,
};

/*
 * /proc/hotadd_probe/clock: the probe's clock now (ns since load, the records' t_ns). The host
 * reads it in round trips to map t_ns to its own clock with a measured uncertainty.
 */
static int clock_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%llu\n", ktime_get_ns() - load_ns);
	return 0;
}

/*
 * Register one dynamic hotplug state. With ADD_EXISTING (`replay`) the kernel calls @startup
 * for every CPU already at that state before returning; without it, only for later CPUs.
 * Caller holds cpus_read_lock(). Returns the state number or a negative errno.
 */
static int setup_state(enum cpuhp_state state, const char *name, int (*startup)(unsigned int),
		       int (*teardown)(unsigned int), bool replay)
{
	if (replay)
		return cpuhp_setup_state_cpuslocked(state, name, startup, teardown);
	return cpuhp_setup_state_nocalls_cpuslocked(state, name, startup, teardown);
}

/*
 * Register both states. With ADD_EXISTING both are set up inside one cpus_read_lock() region,
 * so no hot-add can slip between the replay of "start" and the replay of "complete".
 * Returns 0 or the negative errno of the failed registration (the states are then removed).
 */
static int probe_register(void)
{
	bool replay = flags & PROBE_FLAG_ADD_EXISTING;
	int ret;

	cpus_read_lock();
	WRITE_ONCE(registering, true);
	ret = setup_state(CPUHP_BP_PREPARE_DYN, "hotadd_probe:prepare", probe_prepare_startup,
			  probe_prepare_teardown, replay);
	if (ret < 0)
		goto out;
	prepare_state = ret;

	ret = setup_state(CPUHP_AP_ONLINE_DYN, "hotadd_probe:online", probe_online_startup,
			  probe_online_teardown, replay);
	if (ret < 0) {
		WRITE_ONCE(deregistering, true);
		__cpuhp_remove_state_cpuslocked(prepare_state, true);
		WRITE_ONCE(deregistering, false);
		prepare_state = -1;
		goto out;
	}
	online_state = ret;
	ret = 0;
out:
	WRITE_ONCE(registering, false);
	cpus_read_unlock();
	return ret;
}

static int __init hotadd_probe_init(void)
{
	int ret;

	if (veto_errno <= 0 || veto_errno >= MAX_ERRNO) {
		pr_err("veto_errno=%d is not a positive errno\n", veto_errno);
		return -EINVAL;
	}
	if (flags & ~PROBE_FLAG_ADD_EXISTING) {
		pr_err("flags=%d: only 0 and 1 are defined\n", flags);
		return -EINVAL;
	}
	load_ns = ktime_get_ns();
	proc_dir = proc_mkdir("hotadd_probe", NULL);
	if (!proc_dir || !proc_create_seq("records", 0444, proc_dir, &records_seq_ops) ||
	    !proc_create_single("clock", 0444, proc_dir, clock_show)) {
		proc_remove(proc_dir);
		return -ENOMEM;
	}

	driver_record(EV_LOAD, 0);
	ret = probe_register();
	if (ret == 0) {
		registered = true;
		driver_record(EV_REGISTERED, 0);
	} else {
		/* Unlike a Windows DriverEntry, stay loaded so the records remain readable. */
		driver_record(EV_REGISTER_FAILED, errno_to_ntstatus(ret));
	}
	return 0;
}

static void __exit hotadd_probe_exit(void)
{
	if (registered) {
		WRITE_ONCE(deregistering, true);
		cpuhp_remove_state(online_state);
		cpuhp_remove_state(prepare_state);
		WRITE_ONCE(deregistering, false);
		registered = false;
		driver_record(EV_DEREGISTERED, 0);
	}
	driver_record(EV_UNLOAD, 0);
	proc_remove(proc_dir);
}

module_init(hotadd_probe_init);
module_exit(hotadd_probe_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("hotadd project");
MODULE_DESCRIPTION("Records CPU-hotplug notifications in hotadd record format v1");
