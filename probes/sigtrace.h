/* sigtrace: the event struct and enums shared by the probes (sigtrace.bpf.c) and the Python
 * decoder (sigtrace/backends/bpf/decode.py reads the #defines below and the compiled struct).
 *
 * One struct for every kind keeps the ring buffer protocol trivial; unused fields stay zero.
 * Only tracepoint fields, bpf_get_current_* helpers and socket and task fields at offsets from the
 * running kernel's BTF fill it: with fallback kernel headers a header's struct layout would be wrong.
 */
#ifndef SIGTRACE_H
#define SIGTRACE_H

/* kind: which probe produced the event. Each is declared once, with its fields, capability and
 * tracepoint, in sigtrace/events/kinds.py (ST_KIND_<NAME> / ST_PROBE_<NAME> for kind "name"), which
 * tests/test_event_kinds.py checks against the defines below. */
#define ST_KIND_SIGNAL_GENERATE 1
#define ST_KIND_SIGNAL_DELIVER 2
#define ST_KIND_PROCESS_EXEC 3
#define ST_KIND_PROCESS_EXIT 4
#define ST_KIND_TCP_STATE 5
#define ST_KIND_TCP_RESET_SENT 6
#define ST_KIND_TCP_RESET_RECEIVED 7

/* probe index into the per-CPU "lost" array (ring buffer reserve failures) */
#define ST_PROBE_SIGNAL_GENERATE 0
#define ST_PROBE_SIGNAL_DELIVER 1
#define ST_PROBE_PROCESS_EXEC 2
#define ST_PROBE_PROCESS_EXIT 3
#define ST_PROBE_TCP_STATE 4
#define ST_PROBE_TCP_RESET_SENT 5
#define ST_PROBE_TCP_RESET_RECEIVED 6
#define ST_NPROBES 7

/* per-CPU "counters": TCP events not streamed on purpose (kernel-side filtering) */
#define ST_COUNT_TCP_NOT_POD 0      /* neither endpoint belongs to a recorded pod */
#define ST_COUNT_TCP_UNARMED 1      /* a pod's socket, but the pod is not stopping */
#define ST_COUNT_TCP_ROUTINE 2      /* a routine transition (connect, accept, orderly close) */
#define ST_NCOUNTERS 3

/* TCP states (include/net/tcp_states.h), as the probes and the decoder compare them */
#define ST_TCP_ESTABLISHED 1
#define ST_TCP_SYN_SENT 2
#define ST_TCP_SYN_RECV 3
#define ST_TCP_FIN_WAIT1 4
#define ST_TCP_FIN_WAIT2 5
#define ST_TCP_TIME_WAIT 6
#define ST_TCP_CLOSE 7
#define ST_TCP_CLOSE_WAIT 8
#define ST_TCP_LAST_ACK 9
#define ST_TCP_LISTEN 10
#define ST_TCP_CLOSING 11
#define ST_TCP_NEW_SYN_RECV 12
#define ST_TCP_BOUND_INACTIVE 13

/* Counted closes (ST_CLOSE_COUNTS): an armed pod's routine closes of connections it established
 * while armed are counted per pod, port, side and closer in buckets of ST_CLOSE_BUCKET_MS, and the
 * first ST_CLOSE_SAMPLE of each bucket stream as examples. User space writes the counts as
 * tcp_close_counts events (sigtrace/backends/bpf/backend.py). */
#define ST_CLOSE_BUCKET_MS 100
#define ST_CLOSE_SAMPLE 4
#define ST_PF_EXITING 4            /* task_struct.flags: the task is in do_exit (include/linux/sched.h) */

/* role of a TCP socket relative to the pod it is attributed to */
#define ST_ROLE_NONE 0
#define ST_ROLE_SERVER 1   /* local endpoint is a pod's listening endpoint */
#define ST_ROLE_CLIENT 2   /* remote endpoint is a pod's listening endpoint */

/* signal_deliver handler */
#define ST_HANDLER_DEFAULT 0
#define ST_HANDLER_IGNORE 1
#define ST_HANDLER_HANDLER 2

#define ST_EV_UNKNOWN_CGROUP 1     /* streamed only because user space has not classified its cgroup */
#define ST_EV_LISTENER 2           /* a listener opened or closed (pidx/cidx: the owner's, from its context) */
#define ST_EV_INFO_ONLY 4          /* streamed for user space's endpoint knowledge, not for the recording */
#define ST_TASK_INIT 1             /* pod_tasks flag: the container's PID 1 */
#define ST_AMBIGUOUS 0xffffffff    /* an endpoint claimed by several pods (e.g. 127.0.0.1:9000) */
#define ST_FAMILY_INET 2
#define ST_FAMILY_INET6 10
#define ST_FILENAME_LEN 160

struct st_event {
    u64 ts_ns;          /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
    u64 cgroup_id;      /* cgroup v2 id of the current task */
    u64 skaddr;         /* TCP: socket address (identity only, never dereferenced) */
    u32 kind;
    u32 pid;            /* tgid of the current task */
    u32 tid;
    u32 cidx;           /* container index of the current task (user space registry), 0 = none */
    s32 sig;
    s32 code;
    s32 result;         /* signal_generate result */
    u32 target_pid;
    u32 target_cidx;
    u32 handler;
    u32 ppid;
    s32 exit_code;      /* -1 = not known (killed; fallback probe: exit without exit_group) */
    s32 exit_signal;    /* 0 = none */
    u32 pidx;           /* TCP: pod index of the socket, ST_AMBIGUOUS, or 0 */
    u32 role;
    s32 old_state;
    s32 new_state;
    u32 reason;
    u16 family;
    u16 sport;
    u16 dport;
    u16 pad;
    u32 nspid;          /* pid of the current task in its container's PID namespace, 0 = unknown */
    u32 flags;          /* ST_EV_* */
    u8 saddr[16];       /* IPv4 as ::ffff:a.b.c.d */
    u8 daddr[16];
    char comm[16];
    char target_comm[16];
    char filename[ST_FILENAME_LEN];
};

/* a recorded process or cgroup: which container / pod (user space indexes) */
struct st_task {
    u32 cidx;
    u32 pidx;
    u32 flags;
    u32 pad;
    u64 pidns_ino;      /* the container's PID namespace (nsfs inode), 0 = unknown */
};

/* a pod's TCP endpoint; addr all zero = wildcard listener (0.0.0.0 / ::) */
struct st_ep_key {
    u16 port;
    u16 pad;
    u8 addr[16];
};

struct st_comm {
    char c[16];
};

/* per-tgid exit facts collected before sched_process_exit (fallback without ST_EXIT_TASK) */
struct st_exit {
    s32 code;           /* exit_group() argument & 0xff, -1 none */
    s32 sig;            /* fatal signal seen at delivery */
    s32 pending;        /* last fatal-by-default signal generated for it (SIGKILL shortcut) */
    s32 pad;
};

/* a TCP connection by its 4-tuple, seen from one socket (saddr: our side): the key of an orphan's
 * counted close (a TIME_WAIT / FIN_WAIT2 mini socket resets with an address of its own) */
struct st_ctuple {
    u8 saddr[16];
    u8 daddr[16];
    u16 sport;
    u16 dport;
    u32 pad;
};

/* a connection of an armed pod established while it was armed (conns, by socket address): when, and,
 * once its routine close was counted, that close, streamed late if the connection is reset afterwards */
struct st_close_key {
    u64 bucket;         /* ktime / ST_CLOSE_BUCKET_MS */
    u32 pidx;
    u16 port;           /* the pod's port: local on the server side, remote on the client side */
    u8 role;            /* ST_ROLE_SERVER / ST_ROLE_CLIENT */
    u8 new_state;       /* ST_TCP_FIN_WAIT1: this side closed; ST_TCP_CLOSE_WAIT: the peer closed */
};

struct st_close_count {
    u32 sampled;        /* streamed as examples */
    u32 pad;
    u64 counted;        /* counted, not streamed */
};

struct st_conn {
    u64 skaddr;
    u64 est_ns;
    u64 close_ns;       /* 0: not closed (or its close streamed) */
    u32 est_pid;
    u32 est_tid;
    u32 close_pid;
    u32 close_tid;
    u32 close_cidx;
    s32 est_old;        /* SYN_RECV or SYN_SENT */
    s32 close_new;
    u32 pad;
    struct st_close_key counted;   /* pidx, port, role from the handshake; bucket, new_state once counted */
    struct st_ctuple tuple;        /* a reused socket address is another connection */
    char est_comm[16];
    char close_comm[16];
};

#endif
