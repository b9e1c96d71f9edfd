/* The record the kernel programs put on the ring buffer. Mirrored field for field by
 * omnitrace/record/kernel_abi.py (ctypes): change both together.
 *
 * One fixed layout for every kind keeps the user-space decoder a single ctypes cast; the
 * meaning of the generic fields per kind is written beside each OT_* constant.
 */
#ifndef OMNITRACE_H
#define OMNITRACE_H

#define OT_COMM_LEN 16
#define OT_FILENAME_LEN 128

enum ot_kind {
    OT_FORK = 1,         /* pid/tid: child; other_pid/tid: parent; flags OT_F_THREAD; comm2: child comm;
                            code: the child's pid in the parent's pid namespace (0: the host's).
                            A parent in a pid namespace: written when clone returns, ts of the fork */
    OT_EXEC = 2,         /* pid/tid: the process; other_pid: old pid; filename */
    OT_EXIT = 3,         /* pid/tid: the exiting thread; flags OT_F_GROUP_DEAD on the last thread */
    OT_EXIT_GROUP = 4,   /* pid/tid: caller; code: requested status */
    OT_REAP = 5,         /* pid: reaped; other_pid/tid: reaper; code: raw wait status; flags
                            OT_F_STATUS_KNOWN, OT_F_WAITID, OT_F_NS_PID */
    OT_SIGNAL_GEN = 6,   /* pid/tid: target (pid 0 when the target's process is unknown);
                            other_pid/tid: sender; sig, code, result; flags OT_F_GROUP;
                            comm: target comm; comm2: sender comm */
    OT_SIGNAL_DLV = 7,   /* pid/tid: receiver; sig, code; handler: sa_handler */
    OT_RENAME = 8,       /* pid/tid: renamed thread; comm: old; comm2: new */
    OT_OOM_KILL = 9,     /* pid: victim; comm */
    OT_RELEASE = 10,     /* pid: a traced process the kernel freed with no wait call seen; comm */
    OT_CONTAINER = 11,   /* a container's cgroup was made (follow_containers): handler: its v2 id;
                            filename: its path (cut at 127 bytes); pid/tid/comm: who made it */
};

#define OT_F_THREAD        0x1
#define OT_F_GROUP_DEAD    0x2
#define OT_F_GROUP         0x4
#define OT_F_STATUS_KNOWN  0x8
#define OT_F_WAITID        0x10
#define OT_F_NS_PID        0x20  /* OT_REAP: pid is the reaper's namespace view, not resolved */

struct ot_event {
    __u64 ts;          /* bpf_ktime_get_ns: CLOCK_MONOTONIC */
    __u64 handler;
    __u32 kind;
    __u32 pid;
    __u32 tid;
    __u32 other_pid;
    __u32 other_tid;
    __s32 sig;
    __s32 code;
    __s32 result;
    __u32 flags;
    __u32 _pad;
    char comm[OT_COMM_LEN];
    char comm2[OT_COMM_LEN];
    char filename[OT_FILENAME_LEN];
};

/* Ring-buffer reserve failures: a count and the window they cover (first and last time). */
struct ot_lost {
    __u64 count;
    __u64 first_ts;
    __u64 last_ts;
};

struct ot_config {
    __u32 trace_all;
    __u32 cgroup;        /* 1: also trace every task under cgroup_filter[0] */
    __u64 host_ns_dev;   /* the recorder's pid namespace (st_dev, st_ino of /proc/self/ns/pid): */
    __u64 host_ns_ino;   /* a reaper outside it sees its children's pids in its own namespace */
    __u32 follow_containers;  /* 1: also trace every container whose cgroup is made while recording */
    __u32 _pad;
};

#define OT_CGROUP_PATH_LEN 256

#endif
