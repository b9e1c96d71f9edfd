"""ctypes mirror of bpf/omnitrace.h: the record the BPF programs put on the ring buffer."""
import ctypes

OT_FORK, OT_EXEC, OT_EXIT, OT_EXIT_GROUP, OT_REAP, OT_SIGNAL_GEN, OT_SIGNAL_DLV, OT_RENAME, \
    OT_OOM_KILL, OT_RELEASE, OT_CONTAINER = range(1, 12)

OT_F_THREAD = 0x1
OT_F_GROUP_DEAD = 0x2
OT_F_GROUP = 0x4
OT_F_STATUS_KNOWN = 0x8
OT_F_WAITID = 0x10
OT_F_NS_PID = 0x20


class RawEvent(ctypes.Structure):
    _fields_ = [
        ("ts", ctypes.c_uint64),
        ("handler", ctypes.c_uint64),
        ("kind", ctypes.c_uint32),
        ("pid", ctypes.c_uint32),
        ("tid", ctypes.c_uint32),
        ("other_pid", ctypes.c_uint32),
        ("other_tid", ctypes.c_uint32),
        ("sig", ctypes.c_int32),
        ("code", ctypes.c_int32),
        ("result", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("comm", ctypes.c_char * 16),
        ("comm2", ctypes.c_char * 16),
        ("filename", ctypes.c_char * 128),
    ]


class RawLost(ctypes.Structure):
    _fields_ = [("count", ctypes.c_uint64), ("first_ts", ctypes.c_uint64), ("last_ts", ctypes.c_uint64)]


class RawConfig(ctypes.Structure):
    _fields_ = [("trace_all", ctypes.c_uint32), ("cgroup", ctypes.c_uint32),
                ("host_ns_dev", ctypes.c_uint64), ("host_ns_ino", ctypes.c_uint64),
                ("follow_containers", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]
