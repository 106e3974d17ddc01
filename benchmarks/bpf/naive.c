/* The naive probe set, a reference for benchmarks/bench_probe_cost.py only (never shipped).
 *
 * What a tracer that follows the runtime's function names would attach: one uprobe per scheduler
 * function, at the function's entry, each writing the same struct gotel_event that gotel's own
 * program writes (bpf/gotel_event.h), through a ring buffer without wakeups (like gotel), so the
 * two differ only in where the probes sit and how many functions they need:
 *
 *   runtime.newproc1(fn, callergp, callerpc, ...)  CREATE (the new g is only known at return)
 *   runtime.execute(gp, inheritTime)               RUN
 *   runtime.gopark(unlockf, lock, reason, ...)     PARK  (the parking g is the current g, R14)
 *   runtime.ready(gp, traceskip, next)             READY (waker: m.curg of the current M)
 *   runtime.goexit1()                              EXIT  (the current g)
 *
 * Go's register ABI: arguments in RAX, RBX, RCX, ...; R14 holds the current g. The g/m offsets come
 * in as -D flags from the binary's layout: NAIVE_G_GOID, NAIVE_G_M, NAIVE_M_CURG.
 */
#include <uapi/linux/ptrace.h>
#include "gotel_event.h"

#ifndef NAIVE_RING_PAGES
#define NAIVE_RING_PAGES 2048
#endif

BPF_RINGBUF_OUTPUT(events, NAIVE_RING_PAGES);
BPF_PERCPU_ARRAY(lost, __u64, 1);

static __always_inline __u64 read_u64(__u64 addr)
{
    __u64 v = 0;
    bpf_probe_read_user(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline int emit(struct pt_regs *ctx, __u8 kind, __u64 gp, __u64 aux, __u64 pc_start,
                                __u64 pc_create, __u8 reason)
{
    struct gotel_event *e = events.ringbuf_reserve(sizeof(struct gotel_event));
    if (!e) {
        int zero = 0;
        __u64 *n = lost.lookup(&zero);
        if (n)
            *n += 1;
        return 0;
    }
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    e->ts_ns = bpf_ktime_get_ns();
    e->g = gp;
    e->goid = gp ? read_u64(gp + NAIVE_G_GOID) : 0;
    e->aux_goid = aux;
    e->pc_start = pc_start;
    e->pc_create = pc_create;
    e->pid = pid_tgid >> 32;
    e->tid = (__u32)pid_tgid;
    e->kind = kind;
    e->wait_reason = reason;
    e->old_status = 0;
    e->new_status = 0;
    e->cpu = bpf_get_smp_processor_id();
    events.ringbuf_submit(e, BPF_RB_NO_WAKEUP);
    return 0;
}

static __always_inline __u64 current_goid(struct pt_regs *ctx)
{
    __u64 m = read_u64(ctx->r14 + NAIVE_G_M);
    __u64 curg = m ? read_u64(m + NAIVE_M_CURG) : 0;
    return curg ? read_u64(curg + NAIVE_G_GOID) : 0;
}

int naive_newproc1(struct pt_regs *ctx)
{
    __u64 callergp = ctx->bx;
    return emit(ctx, GOTEL_KIND_CREATE, 0, callergp ? read_u64(callergp + NAIVE_G_GOID) : 0,
                read_u64(ctx->ax), ctx->cx, 0);
}

int naive_execute(struct pt_regs *ctx)
{
    return emit(ctx, GOTEL_KIND_RUN, ctx->ax, 0, 0, 0, 0);
}

int naive_gopark(struct pt_regs *ctx)
{
    return emit(ctx, GOTEL_KIND_PARK, ctx->r14, 0, 0, 0, (__u8)ctx->cx);
}

int naive_ready(struct pt_regs *ctx)
{
    return emit(ctx, GOTEL_KIND_READY, ctx->ax, current_goid(ctx), 0, 0, 0);
}

int naive_goexit1(struct pt_regs *ctx)
{
    return emit(ctx, GOTEL_KIND_EXIT, ctx->r14, 0, 0, 0, 0);
}
