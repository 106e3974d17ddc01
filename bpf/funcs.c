/* gotel's function probes: one uprobe after the prologue of each probed Go function, one on each of
 * its RET instructions (never a uretprobe: it rewrites the return address on a stack that Go moves
 * and walks, golang/go#22008). Both programs read the current g from R14 (Go's ABIInternal keeps it
 * there in every Go function; assembly (ABI0) functions are refused in user space), check it (the
 * stack pointer must lie inside g.stack, else the event is dropped and counted), and submit one
 * struct gotel_func_event with the goroutine id and the frame's distance from the stack top, so
 * that user space matches each return to its entry by goroutine and frame, never by thread.
 *
 * Tunables (-D from receiver/funcs.py): GOTEL_FUNC_RING_BYTES, GOTEL_FUNC_WAKEUP_BYTES,
 * GOTEL_FUNC_GOID (offsetof(runtime.g, goid) of the traced binary), GOTEL_FUNC_REGS (1: copy the
 * argument/result registers into the record, and the first GOTEL_FUNC_STR_BYTES bytes of one string
 * argument or result per function, named by `funcstr`; that needs the uprobe_multi link's cookie,
 * the function's index, so user space sets `funcopts[0]` only when its probes carry one).
 */
#include <uapi/linux/ptrace.h>
#include "gotel_func_event.h"

#ifndef GOTEL_FUNC_RING_BYTES
#define GOTEL_FUNC_RING_BYTES (8 << 20)
#endif
#ifndef GOTEL_FUNC_WAKEUP_BYTES
#define GOTEL_FUNC_WAKEUP_BYTES (GOTEL_FUNC_RING_BYTES / 4)
#endif
#ifndef GOTEL_FUNC_GOID
#error "GOTEL_FUNC_GOID (offsetof(runtime.g, goid)) must be given"
#endif
#ifndef GOTEL_FUNC_REGS
#define GOTEL_FUNC_REGS 0
#endif
#define GOTEL_FUNC_RECORD_BYTES ((8 + sizeof(struct gotel_func_event) + 7) & ~7)
/* g starts with `stack stack` ({lo, hi uintptr}) in every Go release; goid is read in the same go. */
#define GOTEL_FUNC_G_READ (GOTEL_FUNC_GOID + 8)

/* counters[GOTEL_FUNC_COUNTER_*] */
#define GOTEL_FUNC_COUNTER_LOST   0   /* ring buffer full */
#define GOTEL_FUNC_COUNTER_BAD_G  1   /* R14 did not look like the running goroutine: dropped */
#define GOTEL_FUNC_COUNTER_HITS   2
#define GOTEL_FUNC_NUM_COUNTERS   3

/* `funcevents` must stay the first map declared (bpf_pseudo_fd(1, -1) below, as in gotel.c). */
BPF_RINGBUF_OUTPUT(funcevents, GOTEL_FUNC_RING_BYTES / 4096);
#define GOTEL_FUNC_EVENTS_MAP ((void *)bpf_pseudo_fd(1, -1))
BPF_PERCPU_ARRAY(funccounters, __u64, GOTEL_FUNC_NUM_COUNTERS);
#ifndef GOTEL_FUNC_MAX
#define GOTEL_FUNC_MAX 1024
#endif
/* Per function index: the register (0..7 of RAX..R11) holding the pointer of the string to copy at
 * entry and at RET (its length is in the next register); 0xff: none. */
struct gotel_func_str {
    __u8 entry_reg;
    __u8 ret_reg;
};
BPF_ARRAY(funcstr, struct gotel_func_str, GOTEL_FUNC_MAX);
BPF_ARRAY(funcopts, __u32, 1);   /* [0]: 1 when the probes carry the function index as cookie */

#if GOTEL_FUNC_REGS
/* bpf_get_attach_cookie (Linux 5.15; uprobe_multi links carry cookies since 6.6). */
static __u64 (*gotel_get_attach_cookie)(void *ctx) = (void *)174;
#endif

static __always_inline void fcount(int which)
{
    __u64 *n = funccounters.lookup(&which);
    if (n)
        *n += 1;
}

struct gotel_func_g {
    __u64 stack_lo;
    __u64 stack_hi;
    __u8  rest[GOTEL_FUNC_G_READ - 16];
};

static __always_inline int on_func(struct pt_regs *ctx, __u8 kind)
{
    fcount(GOTEL_FUNC_COUNTER_HITS);
    __u64 g = ctx->r14;
    struct gotel_func_g window;
    if (!g || bpf_probe_read_user(&window, sizeof(window), (void *)g) != 0) {
        fcount(GOTEL_FUNC_COUNTER_BAD_G);
        return 0;
    }
    __u64 sp = ctx->sp;
    if (sp < window.stack_lo || sp >= window.stack_hi) {
        fcount(GOTEL_FUNC_COUNTER_BAD_G);
        return 0;
    }
    struct gotel_func_event *e = funcevents.ringbuf_reserve(sizeof(struct gotel_func_event));
    if (!e) {
        fcount(GOTEL_FUNC_COUNTER_LOST);
        return 0;
    }
    __u64 pid_tgid = bpf_get_current_pid_tgid();
    e->ts_ns = bpf_ktime_get_ns();
    e->ip = PT_REGS_IP(ctx);
    e->g = g;
    __builtin_memcpy(&e->goid, &window.rest[GOTEL_FUNC_GOID - 16], sizeof(e->goid));
    e->stack_off = window.stack_hi - sp;
#if GOTEL_FUNC_REGS
    e->regs[0] = ctx->ax;
    e->regs[1] = ctx->bx;
    e->regs[2] = ctx->cx;
    e->regs[3] = ctx->di;
    e->regs[4] = ctx->si;
    e->regs[5] = ctx->r8;
    e->regs[6] = ctx->r9;
    e->regs[7] = ctx->r10;
    e->regs[8] = ctx->r11;
    e->str_len = 0;
    e->flags = 0;
    int zero = 0;
    __u32 *opts = funcopts.lookup(&zero);
    if (opts && *opts) {
        int fn = gotel_get_attach_cookie(ctx);
        struct gotel_func_str *want = funcstr.lookup(&fn);
        __u8 reg = want ? (kind == GOTEL_FUNC_ENTRY ? want->entry_reg : want->ret_reg) : 0xff;
        if (reg < 8) {
            __u64 ptr = e->regs[reg], len = e->regs[reg + 1];
            __u32 n = len > GOTEL_FUNC_STR_BYTES ? GOTEL_FUNC_STR_BYTES : len;
            if (n > 0 && n <= GOTEL_FUNC_STR_BYTES &&
                bpf_probe_read_user(e->str, n, (void *)ptr) == 0) {
                e->flags = GOTEL_FUNC_HAS_STR;
                e->str_len = len > 0xffffffff ? 0xffffffff : len;
            }
        }
    }
#else
    __builtin_memset(e->regs, 0, sizeof(e->regs));
    e->str_len = 0;
    e->flags = 0;
#endif
    e->pid = pid_tgid >> 32;
    e->tid = (__u32)pid_tgid;
    e->kind = kind;
    e->cpu = bpf_get_smp_processor_id();
    __u64 avail = bpf_ringbuf_query(GOTEL_FUNC_EVENTS_MAP, BPF_RB_AVAIL_DATA);
    __u64 flags = BPF_RB_NO_WAKEUP;
    if (avail >= GOTEL_FUNC_WAKEUP_BYTES && avail < GOTEL_FUNC_WAKEUP_BYTES + GOTEL_FUNC_RECORD_BYTES)
        flags = BPF_RB_FORCE_WAKEUP;
    funcevents.ringbuf_submit(e, flags);
    return 0;
}

int probe_func_entry(struct pt_regs *ctx) { return on_func(ctx, GOTEL_FUNC_ENTRY); }
int probe_func_return(struct pt_regs *ctx) { return on_func(ctx, GOTEL_FUNC_RETURN); }
