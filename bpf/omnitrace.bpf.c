/* omnitrace's kernel source: process lifecycle and signals of a traced process tree.
 *
 * Tracepoints only (the stable ABI; this kernel has no kprobes), and only tracepoint arguments
 * and BPF helpers are read, never struct task_struct: the headers bcc compiles against may be a
 * stand-in for another kernel version, whose struct layouts would be wrong here.
 *
 * Filtering happens here, not in user space: `traced` holds the process ids (tgids) of the tree;
 * a fork by a traced process adds the child. Signals sent to or from a traced process are always
 * kept, so an outside `kill -9` shows up with its sender.
 */
#include "omnitrace.h"

#define CLONE_THREAD_FLAG 0x00010000
#define WNOWAIT_FLAG 0x01000000
#define CLD_EXITED 1
#define CLD_KILLED 2
#define CLD_DUMPED 3

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_HASH(traced, u32, u8, 65536);          /* tgid -> 1 */
BPF_HASH(thread_owner, u32, u32, 262144);  /* tid of a non-leader thread of a traced process -> tgid */
BPF_HASH(pending_clone, u32, u64, 65536);  /* tid inside clone()/clone3() -> clone flags */
struct wait_call { u64 addr; u32 options; u32 is_waitid; };
BPF_HASH(pending_wait, u32, struct wait_call, 65536);
BPF_PERCPU_ARRAY(lost, struct ot_lost, 1);
BPF_ARRAY(config, struct ot_config, 1);

static __always_inline bool trace_all(void)
{
    int zero = 0;
    struct ot_config *c = config.lookup(&zero);
    return c && c->trace_all;
}

static __always_inline bool is_traced(u32 tgid)
{
    return trace_all() || traced.lookup(&tgid) != NULL;
}

/* The process a thread id belongs to, when it is one we follow (0 when unknown). */
static __always_inline u32 owner_of(u32 tid)
{
    if (traced.lookup(&tid))
        return tid;
    u32 *owner = thread_owner.lookup(&tid);
    return owner ? *owner : 0;
}

static __always_inline struct ot_event *reserve(u32 kind)
{
    struct ot_event *e = events.ringbuf_reserve(sizeof(struct ot_event));
    u64 now = bpf_ktime_get_ns();
    if (!e) {
        int zero = 0;
        struct ot_lost *l = lost.lookup(&zero);
        if (l) {
            if (l->first_ts == 0)
                l->first_ts = now;
            l->last_ts = now;
            l->count++;
        }
        return NULL;
    }
    __builtin_memset(e, 0, sizeof(*e));
    e->ts = now;
    e->kind = kind;
    return e;
}

static __always_inline void fill_current(struct ot_event *e)
{
    u64 id = bpf_get_current_pid_tgid();
    e->pid = id >> 32;
    e->tid = (u32)id;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
}

/* clone flags tell a new thread from a new process; sched_process_fork runs inside the call. */
TRACEPOINT_PROBE(syscalls, sys_enter_clone)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    u64 flags = args->clone_flags;
    pending_clone.update(&tid, &flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_clone3)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    u32 tid = (u32)id;
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), (void *)args->uargs); /* clone_args.flags is first */
    pending_clone.update(&tid, &flags);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    pending_clone.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone3)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    pending_clone.delete(&tid);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 parent_tgid = id >> 32;
    if (!is_traced(parent_tgid))
        return 0;
    u32 parent_tid = (u32)id;
    u32 child = args->child_pid;
    u64 *flags = pending_clone.lookup(&parent_tid);
    bool thread = flags && (*flags & CLONE_THREAD_FLAG);
    u8 one = 1;
    if (thread)
        thread_owner.update(&child, &parent_tgid);
    else
        traced.update(&child, &one);

    struct ot_event *e = reserve(OT_FORK);
    if (!e)
        return 0;
    e->pid = thread ? parent_tgid : child;
    e->tid = child;
    e->other_pid = parent_tgid;
    e->other_tid = parent_tid;
    e->flags = thread ? OT_F_THREAD : 0;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    TP_DATA_LOC_READ_STR(&e->comm2, child_comm, sizeof(e->comm2));
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    struct ot_event *e = reserve(OT_EXEC);
    if (!e)
        return 0;
    fill_current(e);
    e->other_pid = args->old_pid;
    TP_DATA_LOC_READ_STR(&e->filename, filename, sizeof(e->filename));
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (!is_traced(tgid))
        return 0;
    if (tid != tgid)
        thread_owner.delete(&tid);
    struct ot_event *e = reserve(OT_EXIT);
    if (!e)
        return 0;
    fill_current(e);
    e->flags = args->group_dead ? OT_F_GROUP_DEAD : 0;
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    struct ot_event *e = reserve(OT_EXIT_GROUP);
    if (!e)
        return 0;
    fill_current(e);
    e->code = (int)args->error_code;
    events.ringbuf_submit(e, 0);
    return 0;
}

/* Reaping. The reaper may be anyone (init reaps orphans), so every wait call is remembered
 * and the filter applies to the reaped pid at exit. */
TRACEPOINT_PROBE(syscalls, sys_enter_wait4)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct wait_call call = {.addr = (u64)args->stat_addr, .options = (u32)args->options};
    pending_wait.update(&tid, &call);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_waitid)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct wait_call call = {.addr = (u64)args->infop, .options = (u32)args->options,
                             .is_waitid = 1};
    pending_wait.update(&tid, &call);
    return 0;
}

static __always_inline void emit_reap(u32 reaped, int status, bool known, bool waitid)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(reaped) && !is_traced(id >> 32))
        return;
    traced.delete(&reaped);  /* the pid is free for reuse now: stop following it */
    struct ot_event *e = reserve(OT_REAP);
    if (!e)
        return;
    e->pid = reaped;
    e->tid = reaped;
    e->other_pid = id >> 32;
    e->other_tid = (u32)id;
    e->code = status;
    e->flags = (known ? OT_F_STATUS_KNOWN : 0) | (waitid ? OT_F_WAITID : 0);
    bpf_get_current_comm(&e->comm2, sizeof(e->comm2));
    events.ringbuf_submit(e, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_wait4)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct wait_call *call = pending_wait.lookup(&tid);
    if (!call)
        return 0;
    u64 addr = call->addr;
    pending_wait.delete(&tid);
    if (args->ret <= 0)
        return 0;
    int status = 0;
    bool known = addr && bpf_probe_read_user(&status, sizeof(status), (void *)addr) == 0;
    /* WUNTRACED / WCONTINUED report stops and continues: not a reap */
    if (known && ((status & 0xff) == 0x7f || status == 0xffff))
        return 0;
    emit_reap((u32)args->ret, status, known, false);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_waitid)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct wait_call *call = pending_wait.lookup(&tid);
    if (!call)
        return 0;
    u64 addr = call->addr;
    u32 options = call->options;
    pending_wait.delete(&tid);
    if (args->ret != 0 || !addr || (options & WNOWAIT_FLAG))
        return 0;
    /* siginfo on 64-bit: si_code at 8, then _sigchld { si_pid at 16, si_uid, si_status at 24 } */
    int si_code = 0, si_pid = 0, si_status = 0;
    bpf_probe_read_user(&si_code, sizeof(int), (void *)(addr + 8));
    bpf_probe_read_user(&si_pid, sizeof(int), (void *)(addr + 16));
    bpf_probe_read_user(&si_status, sizeof(int), (void *)(addr + 24));
    if (si_pid <= 0)
        return 0;  /* WNOHANG with nothing to report */
    int status;
    if (si_code == CLD_EXITED)
        status = (si_status & 0xff) << 8;
    else if (si_code == CLD_KILLED)
        status = si_status & 0x7f;
    else if (si_code == CLD_DUMPED)
        status = (si_status & 0x7f) | 0x80;
    else
        return 0;  /* stopped, trapped or continued: not a reap */
    emit_reap((u32)si_pid, status, true, true);
    return 0;
}

TRACEPOINT_PROBE(signal, signal_generate)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 sender = id >> 32;
    u32 target_tid = args->pid;
    u32 target = owner_of(target_tid);
    if (!target && !is_traced(sender))
        return 0;
    struct ot_event *e = reserve(OT_SIGNAL_GEN);
    if (!e)
        return 0;
    e->pid = target;
    e->tid = target_tid;
    e->other_pid = sender;
    e->other_tid = (u32)id;
    e->sig = args->sig;
    e->code = args->code;
    e->result = args->result;
    e->flags = args->group ? OT_F_GROUP : 0;
    bpf_probe_read_kernel(&e->comm, sizeof(e->comm), args->comm);
    bpf_get_current_comm(&e->comm2, sizeof(e->comm2));
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(signal, signal_deliver)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!is_traced(id >> 32))
        return 0;
    struct ot_event *e = reserve(OT_SIGNAL_DLV);
    if (!e)
        return 0;
    fill_current(e);
    e->sig = args->sig;
    e->code = args->code;
    e->handler = args->sa_handler;
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(task, task_rename)
{
    u32 tid = args->pid;
    u32 owner = owner_of(tid);
    if (!owner && !trace_all())
        return 0;
    struct ot_event *e = reserve(OT_RENAME);
    if (!e)
        return 0;
    e->pid = owner ? owner : (u32)(bpf_get_current_pid_tgid() >> 32);
    e->tid = tid;
    bpf_probe_read_kernel(&e->comm, sizeof(e->comm), args->oldcomm);
    bpf_probe_read_kernel(&e->comm2, sizeof(e->comm2), args->newcomm);
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(oom, mark_victim)
{
    u32 pid = args->pid;
    if (!is_traced(pid))
        return 0;
    struct ot_event *e = reserve(OT_OOM_KILL);
    if (!e)
        return 0;
    e->pid = pid;
    e->tid = pid;
    TP_DATA_LOC_READ_STR(&e->comm, comm, sizeof(e->comm));
    events.ringbuf_submit(e, 0);
    return 0;
}
