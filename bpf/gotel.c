/* gotel's kernel side: one uprobe on runtime.casgstatus(gp, oldval, newval) of each traced Go binary.
 *
 * casgstatus sees every status change of every goroutine made through it (creation, run, park, ready
 * including netpoll wakeups, exit, syscalls, preemption, stack copies; not the GC's stack-scan stops,
 * which probe_preemptpark_N below sees), and it is nosplit, so its first
 * instruction is `push %rbp`, which the kernel emulates instead of single-stepping (a probe on a Go
 * stack-check prologue takes a second trap). The trap is paid by every status change, wanted or
 * not: benchmarks/probe_cost.py measures it, and what this program adds per captured event, on the
 * machine at hand. Each hit classifies (old, new) through a table
 * that user space fills per Go layout, drops unwanted kinds before touching the event buffer, reads of
 * the g only what its goid cache cannot give (a creation's fields, a park's wait reason, the goid of a
 * g not yet seen), and writes one struct gotel_event into this CPU's event buffer (`events`, below:
 * no helper call, no lock, no wakeup; the reader polls). Go <= 1.23 numbers
 * a new goroutine only after marking it runnable, so there its CREATE is held in a hash map and sent
 * at the goroutine's next transition, with the goid it has by then.
 *
 * Layouts are per traced binary: slot N of `layouts` holds the offsets of one Go version, and the
 * program probe_casgstatus_N, attached only to binaries of that layout, passes N. Nothing here knows
 * a Go version. Tunables come in as -D cflags from receiver/probes.py.
 */
#include <uapi/linux/ptrace.h>
#include "gotel_event.h"

#ifndef GOTEL_CPUS
#define GOTEL_CPUS 1            /* possible CPUs: one event buffer each */
#endif
#ifndef GOTEL_SLOTS_BITS
#define GOTEL_SLOTS_BITS 16     /* events per CPU buffer: 1 << this */
#endif
#define GOTEL_SLOTS (1 << GOTEL_SLOTS_BITS)
#define GOTEL_MAX_LAYOUTS 8   /* one probe_casgstatus_N per slot, below */
#define GOTEL_G_WINDOW 256     /* bytes of g read at most per event (a power of two) */

/* Offsets into runtime.g / runtime.m of one Go version, and the transition table. An offset of 0
 * means "absent" (no Go field of interest sits at offset 0 of g or m). */
struct gotel_layout {
    __u16 g_goid;
    __u16 g_parent_goid;   /* 0 before Go 1.21: the parent is then the goroutine running on this M */
    __u16 g_gopc;
    __u16 g_startpc;
    __u16 g_waitreason;
    __u16 g_m;
    __u16 m_curg;
    __u16 enabled;         /* 0: slot unused, the program returns at once */
    /* Go <= 1.23 sets g.goid only after casgstatus(_Gdead -> _Grunnable): a CREATE is then held in
     * `created` until the goroutine's next transition, whose old status is one of the bits of
     * late_goid_olds (1 << status), and sent just before it with the goid read then. 0: no holding. */
    __u16 late_goid_olds;
    /* The g fields an event needs are read in one go: g_window is the offset where the read
     * starts, window_len[kind] how many bytes it takes (each bpf_probe_read_user costs ~0.1 us
     * here, so a creation's four fields cost one read instead of four). */
    __u16 g_window;
    __u16 window_len[16];
    /* The stack-scan suspension probe (probe_preemptpark_N): the kind its event gets (PARK, or 0
     * when parks are not wanted) and the number of the "preempted" wait reason in this version. */
    __u8  preempt_kind;
    __u8  preempted_reason;
    /* Raw statuses the lifecycle and preemptPark probes write into their events (they see no
     * status change). */
    __u16 status_runnable;
    __u16 status_running;
    __u16 status_dead;
    __u16 status_preempted;
    /* Bits (1 << status) of the old statuses a g is created from (_Gidle, _Gdead, _Gdeadextra):
     * the goid cache is refreshed at those transitions, never trusted (see `goids`). */
    __u16 dead_olds;
    /* Bits of the old statuses for which a RUN reads g.waitreason: _Gwaiting (a wait that ends
     * without a ready), and _Grunnable too when READY events are not wanted. */
    __u16 run_reason_olds;
    /* Bumped by user space before each attach of casgstatus: goid cache entries of an earlier
     * attachment (g structs reused while no probe watched them) no longer match. */
    __u32 epoch;
    /* curg[(old & 0xf) << 4 | (new & 0xf)] -> GOTEL_CURG_*: what the transition tells of the
     * goroutine the current thread runs (see `threads`). */
    __u8  curg[256];
    /* kinds[(old & 0xf) << 4 | (new & 0xf)] -> GOTEL_KIND_*, 0 drops; the _Gscan bit is ignored. */
    __u8  kinds[256];
};

/* counters[GOTEL_COUNTER_*] */
#define GOTEL_COUNTER_LOST     0   /* this CPU's event buffer full: event lost */
#define GOTEL_COUNTER_HITS     1   /* probe hits that produced a kind (captured or lost) */
#define GOTEL_COUNTER_HELD_FULL 2  /* CREATE not held (map full): sent with goid 0 */
#define GOTEL_NUM_COUNTERS     3

/* Probe points, for the hit counter: what the overhead budget prices (receiver/levels.py). */
#define GOTEL_POINT_CASGSTATUS 0   /* full level: every status change */
#define GOTEL_POINT_CREATE     1   /* lifecycle level: runtime.newproc.func1 at its call to runqput */
#define GOTEL_POINT_EXIT       2   /* lifecycle level: runtime.goexit1 */
#define GOTEL_POINT_PREEMPTPARK 3  /* full level: runtime.preemptPark (GC stack-scan stops) */
#define GOTEL_NUM_POINTS       4
#ifndef GOTEL_HIT_PIDS
#define GOTEL_HIT_PIDS 1024        /* processes are told apart by tgid modulo this (a power of two) */
#endif

#ifndef GOTEL_MAX_HELD
#define GOTEL_MAX_HELD 65536
#endif

/* The goid cache: g address -> goid, so that an event of a goroutine already seen reads nothing
 * of its g (each bpf_probe_read_user costs ~0.07 us here, as much as the rest of the program). A
 * g's goid changes only while it is dead: at creation (newproc1; Go <= 1.23 sets it just after the
 * casgstatus out of _Gdead) and for cgo's extra Ms (set while _Gidle). So an entry is written at a
 * transition out of a dead status (with the goid, or emptied where it is not set yet), filled on a
 * miss otherwise, and used only for a g that is not leaving a dead status. The tag holds the pid
 * (g addresses repeat across processes) and the layout's epoch (a g reused while no probe watched
 * it). Shared by all CPUs and written without locks: `check` ties the four words together, so an
 * entry torn by two concurrent writers (or a preempted one) reads as a miss, never as a mix. */
#ifndef GOTEL_GOID_BITS
#define GOTEL_GOID_BITS 16
#endif
#define GOTEL_GOID_SALT 0x676f74656c676f69ULL
struct gotel_goid_entry {
    __u64 g;
    __u64 tag;
    __u64 goid;
    __u64 check;
};

/* What each thread runs: pid_tgid -> m.curg's goid, so that a wakeup names its waker without the
 * two reads of g0.m and m.curg. Kept from the transitions each thread makes itself, which user
 * space classifies per layout (probes.thread_table): a goroutine that starts running (execute,
 * the end of a syscall or of a GC wait) is m.curg until it stops on that thread; it stops with
 * m.curg cleared (exit, yield, preemption, a syscall that lost its P: dropg follows the status
 * change) or, for a park, with m.curg cleared or not (park_m drops it; the GC's waits on a running
 * goroutine keep it), which is left to the reads. Entries of an earlier attachment (the epoch)
 * or torn ones (`check`, as for `goids`) are not trusted either. */
#define GOTEL_CURG_KEEP    0   /* the thread's goroutine does not change */
#define GOTEL_CURG_RUNS    1   /* gp runs on this thread from now on */
#define GOTEL_CURG_NONE    2   /* no goroutine runs on this thread until the next RUNS */
#define GOTEL_CURG_UNKNOWN 3   /* gp or none: read m.curg when it matters */
#ifndef GOTEL_THREAD_BITS
#define GOTEL_THREAD_BITS 14
#endif
struct gotel_thread_entry {
    __u64 id;      /* pid_tgid */
    __u64 meta;    /* epoch << 32 | GOTEL_CURG_* */
    __u64 goid;    /* RUNS: the goroutine's goid */
    __u64 check;
};

/* The event buffers: GOTEL_SLOTS events per CPU, in one array that the reader maps
 * (receiver/eventbuf.py), each CPU's used as a ring of positions. A writer claims the next position
 * of its CPU (`heads`, which the reader maps too) by compare-and-swap if the reader has read the
 * slot's last event (`tails`, which only the reader writes), writes the event, and stores last its
 * `cpu` field,
 * which in the buffer holds a tag of the position's lap instead (the reader knows the CPU):
 * the reader copies the run of slots whose tag is their lap's, then moves that CPU's tail. The
 * claim is atomic because a uprobe's program may be preempted, and another task of the same CPU
 * may then write; a slot claimed but not yet written holds the reader up until it is. The reader
 * writes no slot, so a writer's store finds its line at most shared, never dirty in another
 * core's cache. All this costs a locked cmpxchg of a line this CPU owns and the stores, no helper
 * call: the BPF ring buffer it replaced (a spinlock with interrupts off in reserve, two helper
 * calls, a fill query for the wakeup) took 17-25 ns more of the program's time a hit here. */
BPF_F_TABLE("array", u32, struct gotel_event, events, GOTEL_CPUS * GOTEL_SLOTS, BPF_F_MMAPABLE);
struct gotel_position {
    __u64 pos;
    __u64 pad[7];   /* a cache line each: CPUs do not share their positions' lines */
};
BPF_F_TABLE("array", u32, struct gotel_position, heads, GOTEL_CPUS, BPF_F_MMAPABLE);
BPF_F_TABLE("array", u32, struct gotel_position, tails, GOTEL_CPUS, BPF_F_MMAPABLE);
/* The tag of a position: its lap plus one, so that a slot never written (0) and one of the lap
 * before never match (the writer is never more than a lap ahead of the reader). */
#define GOTEL_LAP_TAG(pos) ((__u16)(((pos) >> GOTEL_SLOTS_BITS) + 1))
BPF_ARRAY(layouts, struct gotel_layout, GOTEL_MAX_LAYOUTS);
BPF_PERCPU_ARRAY(counters, __u64, GOTEL_NUM_COUNTERS);
/* hits[(tgid % GOTEL_HIT_PIDS) * GOTEL_NUM_POINTS + point]: every probe hit, kept or dropped. An
 * array, not a hash keyed by pid: its lookup is inlined by the JIT, where a hash costs a call. */
BPF_PERCPU_ARRAY(hits, __u64, GOTEL_HIT_PIDS * GOTEL_NUM_POINTS);
/* (process, g address) -> held CREATE; g addresses repeat across processes. */
struct gotel_held_key {
    __u64 g;
    __u64 pid;
};
BPF_HASH(created, struct gotel_held_key, struct gotel_event, GOTEL_MAX_HELD);
BPF_ARRAY(goids, struct gotel_goid_entry, 1 << GOTEL_GOID_BITS);
BPF_ARRAY(threads, struct gotel_thread_entry, 1 << GOTEL_THREAD_BITS);

static __always_inline void count(int which)
{
    __u64 *n = counters.lookup(&which);
    if (n)
        *n += 1;   /* per-CPU: no atomic needed */
}

static __always_inline void count_hit(__u64 pid_tgid, int point)
{
    __u32 i = ((pid_tgid >> 32) & (GOTEL_HIT_PIDS - 1)) * GOTEL_NUM_POINTS + point;
    __u64 *n = hits.lookup(&i);
    if (n)
        *n += 1;
}

static __always_inline __u64 read_u64(__u64 addr)
{
    __u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline struct gotel_goid_entry *goid_entry(__u64 g)
{
    __u32 i = (g * 0x9E3779B97F4A7C15ULL) >> (64 - GOTEL_GOID_BITS);
    return goids.lookup(&i);
}

/* g's goid from the cache; 0 on a miss (goid 0 is never a goroutine's). */
static __always_inline __u64 goid_cached(__u64 g, __u64 tag)
{
    struct gotel_goid_entry *c = goid_entry(g);
    if (!c)
        return 0;
    __u64 cg = *(volatile __u64 *)&c->g, ct = *(volatile __u64 *)&c->tag;
    __u64 cv = *(volatile __u64 *)&c->goid, cc = *(volatile __u64 *)&c->check;
    if (cg != g || ct != tag || (cg ^ ct ^ cv ^ GOTEL_GOID_SALT) != cc)
        return 0;
    return cv;
}

/* Remember g's goid (0: forget it). */
static __always_inline void goid_put(__u64 g, __u64 tag, __u64 goid)
{
    struct gotel_goid_entry *c = goid_entry(g);
    if (!c)
        return;
    if (!goid) {
        *(volatile __u64 *)&c->check = 0;
        return;
    }
    *(volatile __u64 *)&c->g = g;
    *(volatile __u64 *)&c->tag = tag;
    *(volatile __u64 *)&c->goid = goid;
    *(volatile __u64 *)&c->check = g ^ tag ^ goid ^ GOTEL_GOID_SALT;
}

static __always_inline __u64 goid_tag(__u64 pid_tgid, struct gotel_layout *l)
{
    return (pid_tgid & 0xffffffff00000000ULL) | l->epoch;
}

static __always_inline struct gotel_thread_entry *thread_entry(__u64 pid_tgid)
{
    __u32 i = (pid_tgid * 0x9E3779B97F4A7C15ULL) >> (64 - GOTEL_THREAD_BITS);
    return threads.lookup(&i);
}

static __always_inline void thread_set(__u64 pid_tgid, struct gotel_layout *l, __u8 state,
                                       __u64 goid)
{
    struct gotel_thread_entry *t = thread_entry(pid_tgid);
    if (!t)
        return;
    __u64 meta = ((__u64)l->epoch << 32) | state;
    *(volatile __u64 *)&t->id = pid_tgid;
    *(volatile __u64 *)&t->meta = meta;
    *(volatile __u64 *)&t->goid = goid;
    *(volatile __u64 *)&t->check = pid_tgid ^ meta ^ goid ^ GOTEL_GOID_SALT;
}

/* The state of this thread (GOTEL_CURG_UNKNOWN when not known), and in *goid its goroutine. */
static __always_inline __u8 thread_get(__u64 pid_tgid, struct gotel_layout *l, __u64 *goid)
{
    struct gotel_thread_entry *t = thread_entry(pid_tgid);
    if (!t)
        return GOTEL_CURG_UNKNOWN;
    __u64 id = *(volatile __u64 *)&t->id, meta = *(volatile __u64 *)&t->meta;
    __u64 v = *(volatile __u64 *)&t->goid, check = *(volatile __u64 *)&t->check;
    if (id != pid_tgid || (meta >> 32) != l->epoch || (id ^ meta ^ v ^ GOTEL_GOID_SALT) != check)
        return GOTEL_CURG_UNKNOWN;
    *goid = v;
    return meta & 0xff;
}

/* A field of g from the window read at g + l->g_window (the mask keeps the verifier's bounds). */
static __always_inline __u64 window_u64(__u8 *window, struct gotel_layout *l, __u16 off)
{
    __u64 v;
    __builtin_memcpy(&v, window + ((off - l->g_window) & (GOTEL_G_WINDOW - 1)), sizeof(v));
    return v;
}

/* The goroutine that the current M runs (m.curg), 0 when it runs none (the scheduler, e.g.
 * findRunnable injecting netpoll or timer wakeups). R14 is the current g, possibly g0. */
static __always_inline __u64 current_g(struct pt_regs *ctx, struct gotel_layout *l)
{
    __u64 g = ctx->r14;
    if (!g || !l->g_m)
        return 0;
    __u64 m = read_u64(g + l->g_m);
    return m ? read_u64(m + l->m_curg) : 0;
}

/* m.curg's goid, 0 when the M runs none. */
static __always_inline __u64 current_goid(struct pt_regs *ctx, struct gotel_layout *l)
{
    __u64 curg = current_g(ctx, l);
    return curg ? read_u64(curg + l->g_goid) : 0;
}

/* current_goid through the goid cache (the casgstatus program only: it alone keeps the cache
 * right). m.curg is running on this very thread, so it cannot be dead and reborn meanwhile. */
static __always_inline __u64 current_goid_cached(struct pt_regs *ctx, struct gotel_layout *l,
                                                 __u64 tag)
{
    __u64 curg = current_g(ctx, l);
    if (!curg)
        return 0;
    __u64 goid = goid_cached(curg, tag);
    if (!goid) {
        goid = read_u64(curg + l->g_goid);
        goid_put(curg, tag, goid);
    }
    return goid;
}

/* A free slot of this CPU's event buffer, claimed (see `events`): the caller writes every field
 * but `cpu`, then commit()s with *pos. NULL, counted lost, when the buffer is full. */
static __always_inline struct gotel_event *claim(__u64 *pos)
{
    __u32 cpu = bpf_get_smp_processor_id();
    struct gotel_position *h = heads.lookup(&cpu), *t = tails.lookup(&cpu);
    if (!h || !t) {
        count(GOTEL_COUNTER_LOST);   /* not expected (CPU ids are below GOTEL_CPUS): counted all the same */
        return NULL;
    }
    /* A second try only when another task of this CPU claimed the same position meanwhile. */
#pragma unroll
    for (int attempt = 0; attempt < 2; attempt++) {
        __u64 p = *(volatile __u64 *)&h->pos;
        if (p - *(volatile __u64 *)&t->pos >= GOTEL_SLOTS)
            break;   /* the slot's last event is not read yet: the buffer is full */
        __u32 i = cpu * GOTEL_SLOTS + (p & (GOTEL_SLOTS - 1));
        struct gotel_event *slot = events.lookup(&i);
        if (!slot)
            break;
        if (__sync_val_compare_and_swap(&h->pos, p, p + 1) == p) {
            *pos = p;
            return slot;
        }
    }
    count(GOTEL_COUNTER_LOST);
    return NULL;
}

/* Hand a claimed slot to the reader: its lap tag is stored after every other field. */
static __always_inline void commit(struct gotel_event *slot, __u64 pos)
{
    asm volatile("" ::: "memory");   /* x86 keeps stores in order; this keeps the compiler's */
    *(volatile __u16 *)&slot->cpu = GOTEL_LAP_TAG(pos);
}

/* Write an event built elsewhere into this CPU's event buffer. */
static __always_inline void emit(struct gotel_event *e)
{
    __u64 pos;
    struct gotel_event *slot = claim(&pos);
    if (!slot)
        return;
    __builtin_memcpy(slot, e, __builtin_offsetof(struct gotel_event, cpu));   /* all but the tag */
    commit(slot, pos);
}

/* Send the CREATE held for gp (Go <= 1.23), now that g.goid is set. */
static __always_inline void release_held(__u64 gp, struct gotel_layout *l, __u64 tag)
{
    struct gotel_held_key key = {.g = gp, .pid = bpf_get_current_pid_tgid() >> 32};
    struct gotel_event *held = created.lookup(&key);
    if (!held)
        return;
    struct gotel_event e;
    __builtin_memcpy(&e, held, sizeof(e));
    e.goid = read_u64(gp + l->g_goid);
    goid_put(gp, tag, e.goid);
    emit(&e);
    created.delete(&key);
}

static __always_inline int on_casgstatus(struct pt_regs *ctx, int slot)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    count_hit(pid_tgid, GOTEL_POINT_CASGSTATUS);
    struct gotel_layout *l = layouts.lookup(&slot);
    if (!l || !l->enabled)
        return 0;
    /* Go register ABI: gp in RAX, oldval in RBX, newval in RCX. */
    __u64 gp = ctx->ax;
    __u32 oldval = ctx->bx, newval = ctx->cx;
    __u64 tag = goid_tag(pid_tgid, l);
    if (l->late_goid_olds & (1 << (oldval & 0xf)))
        release_held(gp, l, tag);
    __u32 transition = ((oldval & 0xf) << 4) | (newval & 0xf);
    __u8 kind = l->kinds[transition];
    __u8 effect = l->curg[transition];
    int born = l->dead_olds & (1 << (oldval & 0xf));
    if (kind == GOTEL_KIND_DROP) {
        if (born)
            goid_put(gp, tag, 0);   /* its goid is about to change (or be set) */
        if (effect == GOTEL_CURG_RUNS) {
            __u64 goid = goid_cached(gp, tag);
            thread_set(pid_tgid, l, goid ? GOTEL_CURG_RUNS : GOTEL_CURG_UNKNOWN, goid);
        } else if (effect != GOTEL_CURG_KEEP) {
            thread_set(pid_tgid, l, effect, 0);
        }
        return 0;
    }
    count(GOTEL_COUNTER_HITS);

    /* Built on the stack, then copied into the event buffer (or held). */
    struct gotel_event e = {};
    int hold = kind == GOTEL_KIND_CREATE && l->late_goid_olds;
    e.ts_ns = bpf_ktime_get_ns();
    e.g = gp;
    e.pid = pid_tgid >> 32;
    e.tid = (__u32)pid_tgid;
    e.kind = kind;
    e.old_status = oldval;
    e.new_status = newval;
    /* The g itself is read only for what the cache cannot give: a creation's fields, a park's
     * wait reason (and a run's, where the runtime set it only after the park: Go 1.19's GC
     * assists, mark termination, stack scans; the decoder reads it for runs that end a wait with
     * no ready), or the goid of a g the cache does not hold. */
    int window_kind = kind == GOTEL_KIND_CREATE || kind == GOTEL_KIND_PARK ||
        (kind == GOTEL_KIND_RUN && (l->run_reason_olds & (1 << (oldval & 0xf))));
    __u64 goid = born ? 0 : goid_cached(gp, tag);
    int cached = goid != 0;
    if (window_kind) {
        __u8 window[GOTEL_G_WINDOW + 8];
        /* Constant indices: a masked kind is bounded for the verifier only until the compiler,
         * knowing the three kinds of this branch, drops the mask. */
        __u32 len = kind == GOTEL_KIND_CREATE ? l->window_len[GOTEL_KIND_CREATE] :
            kind == GOTEL_KIND_PARK ? l->window_len[GOTEL_KIND_PARK] : l->window_len[GOTEL_KIND_RUN];
        if (len > GOTEL_G_WINDOW)
            len = GOTEL_G_WINDOW;
        bpf_probe_read_user(window, len, (void *)(gp + l->g_window));
        if (!goid)
            goid = window_u64(window, l, l->g_goid);
        if (kind != GOTEL_KIND_CREATE)
            e.wait_reason = window_u64(window, l, l->g_waitreason);
        else {
            e.pc_start = window_u64(window, l, l->g_startpc);
            e.pc_create = window_u64(window, l, l->g_gopc);
            /* The goroutine running on this M is only worth its reads (~0.07 us each here) for
             * a wakeup (who made gp runnable) and for a creation before Go 1.21 (no
             * g.parentGoid). For the other kinds it is gp itself: execute, park_m and goexit0
             * run with m.curg == gp. */
            e.aux_goid = l->g_parent_goid ? window_u64(window, l, l->g_parent_goid)
                                          : current_goid_cached(ctx, l, tag);
        }
    } else if (!goid) {
        goid = read_u64(gp + l->g_goid);
    }
    if (kind == GOTEL_KIND_READY) {
        __u64 waker = 0;
        __u8 state = thread_get(pid_tgid, l, &waker);
        if (state == GOTEL_CURG_RUNS)
            e.aux_goid = waker;
        else if (state == GOTEL_CURG_UNKNOWN)
            e.aux_goid = current_goid_cached(ctx, l, tag);
    }
    if (effect == GOTEL_CURG_RUNS)
        thread_set(pid_tgid, l, goid ? GOTEL_CURG_RUNS : GOTEL_CURG_UNKNOWN, goid);
    else if (effect != GOTEL_CURG_KEEP)
        thread_set(pid_tgid, l, effect, 0);
    /* Go <= 1.23 has no goid yet at a creation: none is sent (the held record gets it later)
     * and the cache forgets the g's last one. */
    e.goid = hold ? 0 : goid;
    if (born)
        goid_put(gp, tag, l->late_goid_olds ? 0 : goid);
    else if (!cached)
        goid_put(gp, tag, goid);
    if (hold) {
        struct gotel_held_key key = {.g = gp, .pid = e.pid};
        if (created.update(&key, &e) == 0)
            return 0;
        /* No room to hold it: send it now with goid 0 (unknown), and count it. */
        count(GOTEL_COUNTER_HELD_FULL);
    }
    emit(&e);
    return 0;
}

/* runtime.preemptPark(gp): the GC (suspendG) stops a running goroutine to scan its stack. The
 * runtime swaps the status itself (casGToPreemptScan, _Grunning -> _Gscan|_Gpreempted, then
 * casGFromPreempted to _Gwaiting) without casgstatus; only its ready (_Gwaiting -> _Grunnable) and
 * its next run pass through casgstatus. This probe reports the stop as a park with reason
 * "preempted", as Go's tracer does. It runs on g0 (mcall) or on gp's stack (newstack): gp is the
 * argument, in RAX. A hit per GC stop of a running goroutine, so its cost is rarely paid. */
static __always_inline int on_preemptpark(struct pt_regs *ctx, int slot)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    count_hit(pid_tgid, GOTEL_POINT_PREEMPTPARK);
    struct gotel_layout *l = layouts.lookup(&slot);
    if (!l || !l->enabled)
        return 0;
    thread_set(pid_tgid, l, GOTEL_CURG_NONE, 0);   /* dropg follows: the thread runs nothing */
    if (!l->preempt_kind)
        return 0;
    __u64 gp = ctx->ax;
    if (!gp)
        return 0;
    count(GOTEL_COUNTER_HITS);
    struct gotel_event e = {};
    e.ts_ns = bpf_ktime_get_ns();
    e.g = gp;
    e.goid = read_u64(gp + l->g_goid);
    e.pid = pid_tgid >> 32;
    e.tid = (__u32)pid_tgid;
    e.kind = l->preempt_kind;
    e.wait_reason = l->preempted_reason;
    e.old_status = l->status_running;
    e.new_status = l->status_preempted;
    emit(&e);
    return 0;
}

/* The lifecycle level: one event at a goroutine's creation and one at its exit, no other trap.
 * CREATE: runtime.newproc.func1 (newproc's system-stack closure) at its `call runtime.runqput`,
 * just after newproc1 returned the new g (receiver/lifecycle.py finds the register holding it there);
 * every field is set by then, on every Go version. EXIT: runtime.goexit1, which runs on the exiting
 * goroutine itself (R14) and always ends in goexit0. Both probes sit on instructions the kernel
 * emulates (a call, a push or a jcc), so a hit is one trap. */
static __always_inline int on_lifecycle(struct pt_regs *ctx, int slot, __u64 gp, __u8 kind, int point)
{
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    count_hit(pid_tgid, point);
    struct gotel_layout *l = layouts.lookup(&slot);
    if (!l || !l->enabled || !gp)
        return 0;
    count(GOTEL_COUNTER_HITS);
    __u8 window[GOTEL_G_WINDOW + 8];
    __u32 len = l->window_len[kind & 0xf];
    if (len > GOTEL_G_WINDOW)
        len = GOTEL_G_WINDOW;
    bpf_probe_read_user(window, len, (void *)(gp + l->g_window));
    __u64 pos;
    struct gotel_event *e = claim(&pos);
    if (!e)
        return 0;
    e->ts_ns = bpf_ktime_get_ns();
    e->g = gp;
    e->goid = window_u64(window, l, l->g_goid);
    e->pid = pid_tgid >> 32;
    e->tid = (__u32)pid_tgid;
    e->kind = kind;
    e->wait_reason = 0;
    if (kind == GOTEL_KIND_CREATE) {
        e->old_status = l->status_dead;
        e->new_status = l->status_runnable;
        e->pc_start = window_u64(window, l, l->g_startpc);
        e->pc_create = window_u64(window, l, l->g_gopc);
        /* Before Go 1.21 (no g.parentGoid): the creator is m.curg, R14 being g0 here. */
        e->aux_goid = l->g_parent_goid ? window_u64(window, l, l->g_parent_goid) : current_goid(ctx, l);
    } else {
        e->old_status = l->status_running;
        e->new_status = l->status_dead;
        e->pc_start = 0;
        e->pc_create = 0;
        e->aux_goid = 0;
    }
    commit(e, pos);
    return 0;
}

#define GOTEL_PROBE(N) \
    int probe_casgstatus_##N(struct pt_regs *ctx) { return on_casgstatus(ctx, N); } \
    int probe_create_ax_##N(struct pt_regs *ctx) { \
        return on_lifecycle(ctx, N, ctx->ax, GOTEL_KIND_CREATE, GOTEL_POINT_CREATE); } \
    int probe_create_bx_##N(struct pt_regs *ctx) { \
        return on_lifecycle(ctx, N, ctx->bx, GOTEL_KIND_CREATE, GOTEL_POINT_CREATE); } \
    int probe_exit_##N(struct pt_regs *ctx) { \
        return on_lifecycle(ctx, N, ctx->r14, GOTEL_KIND_EXIT, GOTEL_POINT_EXIT); } \
    int probe_preemptpark_##N(struct pt_regs *ctx) { return on_preemptpark(ctx, N); }

GOTEL_PROBE(0)
GOTEL_PROBE(1)
GOTEL_PROBE(2)
GOTEL_PROBE(3)
GOTEL_PROBE(4)
GOTEL_PROBE(5)
GOTEL_PROBE(6)
GOTEL_PROBE(7)
