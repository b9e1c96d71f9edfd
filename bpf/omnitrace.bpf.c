/* omnitrace's kernel source: process lifecycle and signals of a traced process tree.
 *
 * Tracepoints only (the stable ABI; this kernel has no kprobes), and only tracepoint arguments
 * and BPF helpers are read, never struct task_struct: the headers bcc compiles against may be a
 * stand-in for another kernel version, whose struct layouts would be wrong here.
 *
 * Filtering happens here, not in user space: `traced` holds the process ids (tgids) of the tree;
 * a fork by a traced process adds the child. Signals sent to or from a traced process are always
 * kept, so an outside `kill -9` shows up with its sender. With a cgroup to record (config.cgroup),
 * any task under that cgroup v2 group (subgroups included) is traced too, and joins `traced` the
 * first time it hits a tracepoint: a container runtime moves its processes in from outside, so
 * they are not all forked by a traced process. With config.follow_containers, the same holds for
 * every container whose cgroup is made while recording (one a daemon starts for the recorded
 * command: dockerd, containerd, a podman service), so it is followed though no traced process
 * forked it.
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
/* ts and deferred: a fork by a process in a pid namespace is written when clone returns, with the
 * fork's time, so that it carries the pid the namespace gave the child (see clone_returned). */
struct clone_call { u64 flags; u64 ts; u32 child; u32 deferred; };
BPF_HASH(pending_clone, u32, struct clone_call, 65536);  /* tid inside clone()/clone3() */
/* (reaper tgid, child's pid in the reaper's pid namespace) -> the child's host pid: wait4 in a
 * container returns the namespace pid; clone returned that same number to the parent. */
struct ns_key { u32 reaper; u32 ns_pid; };
BPF_TABLE("lru_hash", struct ns_key, u32, ns_child, 65536);
BPF_CGROUP_ARRAY(cgroup_filter, 1);
BPF_HASH(container_cgroups, u64, u8, 1024);  /* cgroup v2 id of a container made while recording */
struct path_buf { char path[OT_CGROUP_PATH_LEN]; };
BPF_PERCPU_ARRAY(path_bufs, struct path_buf, 1);
struct wait_call { u64 addr; u32 options; u32 is_waitid; };
BPF_HASH(pending_wait, u32, struct wait_call, 65536);
BPF_PERCPU_ARRAY(lost, struct ot_lost, 1);
BPF_ARRAY(config, struct ot_config, 1);

static __always_inline struct ot_config *settings(void)
{
    int zero = 0;
    return config.lookup(&zero);
}

static __always_inline bool trace_all(void)
{
    struct ot_config *c = settings();
    return c && c->trace_all;
}

static __always_inline bool is_traced(u32 tgid)
{
    return trace_all() || traced.lookup(&tgid) != NULL;
}

static __always_inline bool in_recorded_cgroup(struct ot_config *c)
{
    return c->cgroup && cgroup_filter.check_current_task(0) == 1;
}

static __always_inline bool in_followed_container(struct ot_config *c)
{
    if (!c->follow_containers)
        return false;
    u64 id = bpf_get_current_cgroup_id();
    return container_cgroups.lookup(&id) != NULL;
}

/* Whether the current task is followed: traced already, or under the recorded cgroup, in which
 * case it joins `traced` (and its thread `thread_owner`) so that signals sent to it by pid from
 * outside the group are kept as well. */
static __always_inline bool current_traced(void)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    if (is_traced(tgid))
        return true;
    struct ot_config *c = settings();
    if (!c || !(in_recorded_cgroup(c) || in_followed_container(c)))
        return false;
    u8 one = 1;
    traced.update(&tgid, &one);
    if (tid != tgid)
        thread_owner.update(&tid, &tgid);
    return true;
}

/* Whether the current task sees pids as the host does (the recorder's pid namespace). */
static __always_inline bool in_host_pid_ns(void)
{
    struct ot_config *c = settings();
    if (!c || !c->host_ns_ino)
        return true;
    struct bpf_pidns_info ns = {};
    return bpf_get_ns_current_pid_tgid(c->host_ns_dev, c->host_ns_ino, &ns, sizeof(ns)) == 0;
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

/* A record about one process named by the tracepoint (not the current task): pid and comm. */
static __always_inline void emit_process_event(u32 kind, u32 pid, const char *comm)
{
    struct ot_event *e = reserve(kind);
    if (!e)
        return;
    e->pid = pid;
    e->tid = pid;
    bpf_probe_read_kernel_str(&e->comm, sizeof(e->comm), comm);
    events.ringbuf_submit(e, 0);
}

/* A __data_loc string field of the tracepoint's record: offset in the low 16 bits. */
#define TP_DATA_LOC(field) ((const char *)args + (args->data_loc_##field & 0xFFFF))

/* code: the child's pid in the parent's pid namespace, 0 when that is the host's. comm2 is the
 * child's comm, which a fork copies from its parent. */
static __always_inline void emit_fork(u64 ts, u32 child, u64 parent, bool thread, u32 ns_pid)
{
    struct ot_event *e = reserve(OT_FORK);
    if (!e)
        return;
    e->ts = ts;
    e->pid = thread ? parent >> 32 : child;
    e->tid = child;
    e->other_pid = parent >> 32;
    e->other_tid = (u32)parent;
    e->flags = thread ? OT_F_THREAD : 0;
    e->code = ns_pid;
    bpf_get_current_comm(&e->comm, sizeof(e->comm));
    bpf_get_current_comm(&e->comm2, sizeof(e->comm2));
    events.ringbuf_submit(e, 0);
}

/* clone flags tell a new thread from a new process; sched_process_fork runs inside the call. */
TRACEPOINT_PROBE(syscalls, sys_enter_clone)
{
    if (!current_traced())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct clone_call call = {.flags = args->clone_flags};
    pending_clone.update(&tid, &call);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_clone3)
{
    if (!current_traced())
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct clone_call call = {};
    /* clone_args.flags is first */
    bpf_probe_read_user(&call.flags, sizeof(call.flags), (void *)args->uargs);
    pending_clone.update(&tid, &call);
    return 0;
}

/* clone returns the child's pid as the caller's pid namespace numbers it; when that is not the
 * host pid sched_process_fork saw, remember the pair for the caller's wait4/waitid. */
static __always_inline void clone_returned(long ret)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct clone_call *call = pending_clone.lookup(&tid);
    if (!call)
        return;
    struct clone_call done = *call;
    pending_clone.delete(&tid);
    bool thread = done.flags & CLONE_THREAD_FLAG;
    if (ret > 0 && done.child && (u32)ret != done.child && !thread) {
        struct ns_key key = {.reaper = id >> 32, .ns_pid = (u32)ret};
        ns_child.update(&key, &done.child);
    }
    if (done.deferred)
        emit_fork(done.ts, done.child, id, false, ret > 0 ? (u32)ret : 0);
}

/* fork(2) and vfork(2) make processes too (dash runs commands with vfork). */
static __always_inline void process_clone_called(void)
{
    if (!current_traced())
        return;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct clone_call call = {};
    pending_clone.update(&tid, &call);
}

TRACEPOINT_PROBE(syscalls, sys_enter_fork)
{
    process_clone_called();
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_vfork)
{
    process_clone_called();
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_fork)
{
    clone_returned(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_vfork)
{
    clone_returned(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone)
{
    clone_returned(args->ret);
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_clone3)
{
    clone_returned(args->ret);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 parent_tgid = id >> 32;
    if (!current_traced())
        return 0;
    u32 parent_tid = (u32)id;
    u32 child = args->child_pid;
    struct clone_call *call = pending_clone.lookup(&parent_tid);
    bool thread = call && (call->flags & CLONE_THREAD_FLAG);
    u8 one = 1;
    if (thread)
        thread_owner.update(&child, &parent_tgid);
    else
        traced.update(&child, &one);
    if (call) {
        call->child = child;
        /* In a pid namespace the child's pid there is known only when clone returns it. */
        if (!thread && !in_host_pid_ns()) {
            call->ts = bpf_ktime_get_ns();
            call->deferred = 1;
            return 0;
        }
    }
    emit_fork(bpf_ktime_get_ns(), child, id, thread, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    if (!current_traced())
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
    if (!current_traced())
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
    if (!current_traced())
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

/* A reaper in a pid namespace (a container's init or shell) gets the child's pid as that
 * namespace numbers it: the host pid is the one its clone returned that number for. When that
 * clone was not seen (an orphan handed to the reaper), the record says so and user space
 * translates it. */
static __always_inline u32 host_pid_of_reaped(u32 reaped, u32 reaper, u32 *flags)
{
    if (in_host_pid_ns())
        return reaped;
    struct ns_key key = {.reaper = reaper, .ns_pid = reaped};
    u32 *host = ns_child.lookup(&key);
    if (!host) {
        *flags |= OT_F_NS_PID;
        return reaped;
    }
    u32 pid = *host;
    ns_child.delete(&key);
    return pid;
}

static __always_inline void emit_reap(u32 reaped, int status, bool known, bool waitid)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 flags = (known ? OT_F_STATUS_KNOWN : 0) | (waitid ? OT_F_WAITID : 0);
    reaped = host_pid_of_reaped(reaped, id >> 32, &flags);
    bool host_pid = !(flags & OT_F_NS_PID);
    if (!(host_pid && is_traced(reaped)) && !current_traced())
        return;
    if (host_pid)
        traced.delete(&reaped);  /* the pid is free for reuse now: stop following it */
    struct ot_event *e = reserve(OT_REAP);
    if (!e)
        return;
    e->pid = reaped;
    e->tid = reaped;
    e->other_pid = id >> 32;
    e->other_tid = (u32)id;
    e->code = status;
    e->flags = flags;
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

/* A process can be reaped with no wait call: when a pid namespace's init exits, the kernel kills
 * and reaps the rest of the namespace itself (a container's teardown), and a child of a parent
 * that ignores SIGCHLD is released at its exit. The task is freed (after an RCU grace period)
 * only once reaped, so a traced pid still in `traced` here was reaped by a path the wait
 * tracepoints did not show. A reap seen by wait4/waitid removed its pid already, so this
 * records only the others. (The pid could in theory be handed out again between the reap and
 * this callback; that needs the pid space to wrap within a grace period.) */
TRACEPOINT_PROBE(sched, sched_process_free)
{
    u32 pid = args->pid;
    if (!traced.lookup(&pid))
        return 0;
    traced.delete(&pid);
    emit_process_event(OT_RELEASE, pid, TP_DATA_LOC(comm));
    return 0;
}

#define CONTAINER_ID_LEN 64
#define SCOPE_SUFFIX_LEN 6  /* ".scope" */

static __always_inline bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
}

/* Whether a cgroup path (len bytes, no NUL) names a container: its last component ends with a
 * 64-hex container id, or with one and ".scope", right after a '/' or '-' (podman's
 * libpod-ID, docker's docker-ID.scope and /docker/ID, containerd's cri-containerd-ID.scope,
 * CRI-O's crio-ID.scope). Fixed offsets from the end, no scan: the verifier takes a 64-step
 * loop with no state but its index. */
static __always_inline bool names_a_container(const char *path, long len)
{
    long end = len;
    if (end > SCOPE_SUFFIX_LEN && path[(end - 6) & (OT_CGROUP_PATH_LEN - 1)] == '.' &&
        path[(end - 5) & (OT_CGROUP_PATH_LEN - 1)] == 's')
        end -= SCOPE_SUFFIX_LEN;
    long start = end - CONTAINER_ID_LEN;
    if (start < 1)
        return false;
    char before = path[(start - 1) & (OT_CGROUP_PATH_LEN - 1)];
    if (before != '/' && before != '-')
        return false;
    for (int k = 0; k < CONTAINER_ID_LEN; k++) {
        if (!is_hex(path[(start + k) & (OT_CGROUP_PATH_LEN - 1)]))
            return false;
    }
    return true;
}

/* A container's cgroup is made before its runtime moves the container's first process in: from
 * then on a task in it is traced (current_traced). Hierarchy 0 is cgroup v2, whose ids are what
 * bpf_get_current_cgroup_id returns (a v1 hierarchy numbers its groups on its own). */
TRACEPOINT_PROBE(cgroup, cgroup_mkdir)
{
    struct ot_config *c = settings();
    if (!c || !c->follow_containers || args->root != 0)
        return 0;
    int zero = 0;
    struct path_buf *pb = path_bufs.lookup(&zero);
    if (!pb)
        return 0;
    unsigned short offset = args->data_loc_path & 0xFFFF;
    long copied = bpf_probe_read_kernel_str(pb->path, OT_CGROUP_PATH_LEN, (char *)args + offset);
    if (copied <= 1 || !names_a_container(pb->path, copied - 1))
        return 0;
    u64 id = args->id;
    u8 one = 1;
    container_cgroups.update(&id, &one);
    struct ot_event *e = reserve(OT_CONTAINER);
    if (!e)
        return 0;
    fill_current(e);
    e->handler = id;
    bpf_probe_read_kernel_str(&e->filename, sizeof(e->filename), pb->path);
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(signal, signal_generate)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 sender = id >> 32;
    u32 target_tid = args->pid;
    u32 target = owner_of(target_tid);
    if (!target && !current_traced())
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
    if (!current_traced())
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
    u64 id = bpf_get_current_pid_tgid();
    if (!owner && tid == (u32)id && current_traced())
        owner = id >> 32;  /* a cgroup member renaming itself before we met it */
    if (!owner && !trace_all())
        return 0;
    struct ot_event *e = reserve(OT_RENAME);
    if (!e)
        return 0;
    e->pid = owner ? owner : (u32)(id >> 32);
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
    emit_process_event(OT_OOM_KILL, pid, TP_DATA_LOC(comm));
    return 0;
}
