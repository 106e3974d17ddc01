/* The one record gotel's BPF programs write to their event buffers: a goroutine status transition.
 *
 * Mirrored, field for field, by receiver/events.py (EVENT_DTYPE); tests/receiver/test_events.py
 * compiles this header and proves sizes and offsets agree. Fixed size and naturally aligned, so that user space can view a
 * whole run of records as one numpy array. Little-endian (amd64).
 */
#ifndef GOTEL_EVENT_H
#define GOTEL_EVENT_H

/* Kinds of transition. The kernel does not classify statuses itself: user space writes, per Go
 * layout, a table from (old status, new status) to kind (see struct gotel_layout), so that status
 * numbering lives in one place (receiver/) and unwanted kinds are dropped before the event buffers. */
#define GOTEL_KIND_DROP           0   /* not emitted */
#define GOTEL_KIND_CREATE         1   /* _Gdead -> _Grunnable (or _Gwaiting / _Gsyscall) */
#define GOTEL_KIND_RUN            2   /* -> _Grunning from runnable or waiting */
#define GOTEL_KIND_PARK           3   /* _Grunning -> _Gwaiting, wait_reason set; also a GC stop
                                         (runtime.preemptPark: -> _Gpreempted, "preempted") */
#define GOTEL_KIND_READY          4   /* _Gwaiting -> _Grunnable (ready, netpoll, timers) */
#define GOTEL_KIND_EXIT           5   /* -> _Gdead */
#define GOTEL_KIND_SYSCALL_ENTER  6   /* _Grunning -> _Gsyscall */
#define GOTEL_KIND_SYSCALL_EXIT   7   /* _Gsyscall -> _Grunning or _Grunnable */
#define GOTEL_KIND_PREEMPT        8   /* _Grunning -> _Grunnable or _Gpreempted */
#define GOTEL_KIND_STACK_COPY     9   /* to or from _Gcopystack */
#define GOTEL_KIND_EXISTING      10   /* synthesized in user space: a goroutine alive at attach */
#define GOTEL_KIND_CENSUS        11   /* synthesized in user space: the census of a window's
                                         opening is complete (see receiver/existing.py) */
#define GOTEL_NUM_KINDS          12

struct gotel_event {
    __u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC; user space rewrites it to Unix ns */
    __u64 g;            /* address of the runtime.g that changed status */
    __u64 goid;         /* g.goid */
    __u64 aux_goid;     /* CREATE/EXISTING: parent goid (0: none, e.g. made by the runtime);
                           READY: the waking goroutine (0: the scheduler, e.g. netpoll or timers);
                           other kinds: 0 */
    __u64 pc_start;     /* CREATE/EXISTING: g.startpc */
    __u64 pc_create;    /* CREATE/EXISTING: g.gopc (the go statement) */
    __u32 pid;          /* thread group id */
    __u32 tid;          /* thread id; EXISTING and CENSUS of a window's census: its number */
    __u8  kind;         /* GOTEL_KIND_* */
    __u8  wait_reason;  /* PARK, RUN: g.waitreason (numbering is per Go version); a RUN's is what
                           the runtime set by then (see the decoder's runtime work) */
    __u16 old_status;   /* raw runtime status, _Gscan bit included */
    __u16 new_status;
    __u16 cpu;          /* the CPU whose event buffer held it (in the buffer: its lap tag, see
                           `events` in gotel.c; the reader writes the CPU in) */
};

/* Every field sits at its natural alignment, so the struct needs no packing (packing would make
 * clang store it byte by byte inside the probe). */
_Static_assert(sizeof(struct gotel_event) == 64, "struct gotel_event must stay 64 bytes");

#endif
