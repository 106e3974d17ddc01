/* The record of bpf/funcs.c: one entry into, or one return from, a probed Go function.
 *
 * Mirrored, field for field, by receiver/funcs.py (FUNC_EVENT_DTYPE); tests/receiver/test_func_probes.py
 * compiles this header and proves sizes and offsets agree. Fixed size, naturally aligned,
 * little-endian (amd64), so a run of ring-buffer records is one numpy array.
 */
#ifndef GOTEL_FUNC_EVENT_H
#define GOTEL_FUNC_EVENT_H

#define GOTEL_FUNC_ENTRY   1   /* the probe after the function's prologue */
#define GOTEL_FUNC_RETURN  2   /* a probe on one of its RET instructions */

#define GOTEL_FUNC_NUM_REGS 9  /* Go ABIInternal integer argument/result registers */
#define GOTEL_FUNC_STR_BYTES 32  /* bytes of one string argument or result copied, at most */
#define GOTEL_FUNC_HAS_STR 1     /* flags: str holds the start of a string */

struct gotel_func_event {
    __u64 ts_ns;        /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    __u64 ip;           /* the probed instruction's address in the process (user space maps it to
                           a function; a PIE's is biased) */
    __u64 g;            /* R14: the current g in Go's register ABI */
    __u64 goid;         /* g.goid */
    __u64 stack_off;    /* g.stack.hi - SP: the same at a call's entry and at its RET, even after the
                           runtime copied the stack elsewhere; it tells frames (recursion) apart */
    __u64 regs[GOTEL_FUNC_NUM_REGS]; /* RAX RBX RCX RDI RSI R8 R9 R10 R11 (arguments at entry,
                                        results at RET); zero unless captured */
    __u32 pid;          /* thread group id */
    __u32 tid;          /* thread id (for comparison only: calls are matched by goroutine) */
    __u8  kind;         /* GOTEL_FUNC_ENTRY or GOTEL_FUNC_RETURN */
    __u8  flags;        /* GOTEL_FUNC_HAS_STR */
    __u16 cpu;
    __u32 str_len;      /* the string's length (its first GOTEL_FUNC_STR_BYTES bytes are in str) */
    __u8  str[GOTEL_FUNC_STR_BYTES]; /* one string argument (entry) or result (RET), when asked */
};

_Static_assert(sizeof(struct gotel_func_event) == 160, "struct gotel_func_event must stay 160 bytes");

#endif
