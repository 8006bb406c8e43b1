/*
 * probe_atomic.h - the five atomic operations the record ring needs, for MSVC (the WDK build)
 * and GCC/Clang (mingw-w64 and the host tests), without kernel or C11 <stdatomic.h> headers.
 *
 * Environment: private to probe_ring.c. Every operation is safe at any IRQL: on MSVC they are
 * the _Interlocked* compiler intrinsics ntoskrnl's own Interlocked* macros expand to (full
 * barriers); on GCC they are __atomic builtins with the ordering named in each macro.
 * All operands are 64-bit, naturally aligned.
 */
#ifndef HOTADD_PROBE_ATOMIC_H
#define HOTADD_PROBE_ATOMIC_H

typedef volatile long long HAP_ATOMIC64;

#if defined(_MSC_VER)
#include <intrin.h>

/* _InterlockedOr64(p, 0) is a full-barrier read: correct on x64 and ARM64 whatever /volatile. */
#define HapAtomicLoadAcquire(p)         _InterlockedOr64((p), 0)
#define HapAtomicStoreRelease(p, v)     ((void)_InterlockedExchange64((p), (v)))
#define HapAtomicExchange(p, v)         _InterlockedExchange64((p), (v))
#define HapAtomicAdd(p, v)              ((void)_InterlockedExchangeAdd64((p), (v)))
/* Returns nonzero when *p was *expected and now holds desired; else stores *p into *expected. */
static __forceinline int
HapAtomicCompareExchange(HAP_ATOMIC64 *p, long long *expected, long long desired)
{
    long long seen = _InterlockedCompareExchange64(p, desired, *expected);
    if (seen == *expected) {
        return 1;
    }
    *expected = seen;
    return 0;
}

#elif defined(__GNUC__)

#define HapAtomicLoadAcquire(p)         __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define HapAtomicStoreRelease(p, v)     __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define HapAtomicExchange(p, v)         __atomic_exchange_n((p), (v), __ATOMIC_ACQ_REL)
#define HapAtomicAdd(p, v)              ((void)__atomic_fetch_add((p), (v), __ATOMIC_RELAXED))
#define HapAtomicCompareExchange(p, expected, desired) \
    __atomic_compare_exchange_n((p), (expected), (desired), 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)

#else
#error "probe_atomic.h: add the atomic operations for this compiler"
#endif

#endif /* HOTADD_PROBE_ATOMIC_H */
