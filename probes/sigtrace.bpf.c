/* sigtrace probes: signals, exec/exit and TCP closes/resets of pod processes.
 *
 * Loaded by sigtrace/backends/bpf/program.py, which prepends a prelude of #defines chosen from
 * the running kernel's tracepoint format files (ST_SR_*: tcp_send_reset's shape) and BTF (ST_TCP_RAW,
 * ST_SK_*, ST_INET_*: the socket fields the raw inet_sock_set_state probe reads; ST_EXIT_TASK,
 * ST_TASK_EXIT_CODE: where the exit status is read), the filter mode (ST_FILTER_ALL), the ring buffer
 * size and the sigtrace.h header.
 *
 * Cost design: signals, exec and exit are rare and always streamed for pod processes. TCP
 * transitions are frequent: they are attributed to a pod by endpoint (a pod's listening
 * address/port, local or remote), never by the current task alone (softirq context), and only
 * streamed while that pod is "armed" (stopping: a stop signal reached a container's PID 1, an init
 * exited, or user space learnt of the pod's deletion from the API); otherwise a per-CPU counter is
 * bumped. An exec into a running container (exec probes, kubectl exec) never arms.
 */
#include <uapi/linux/ptrace.h>

#if ST_DECLARE_RST_REASON
/* tcp_send_reset's format names this enum; headers older than 6.10 do not declare it. */
enum sk_rst_reason { ST_SK_RST_REASON_PLACEHOLDER = 0 };
#endif

/* Two rings: a flood of TCP events (a stopping pod under load) must never crowd out the rare
 * signal/exec/exit events the verdicts hinge on. */
BPF_RINGBUF_OUTPUT(events, ST_RINGBUF_PAGES);
BPF_RINGBUF_OUTPUT(tcp_events, ST_RINGBUF_PAGES);

BPF_HASH(pod_cgroups, u64, struct st_task, 8192);      /* cgroup v2 id -> container/pod */
BPF_HASH(pod_tasks, u32, struct st_task, 65536);       /* tgid (and tids) -> container/pod */
BPF_HASH(armed, u32, u64, 8192);                       /* pod index -> ktime when armed */
BPF_HASH(endpoints, struct st_ep_key, u32, 16384);     /* endpoint -> pod index / ST_AMBIGUOUS */
BPF_ARRAY(endpoint_ports, u8, 65536);                  /* port -> 1 when some endpoint has it (never cleared) */
BPF_HASH(runtime_comms, struct st_comm, u32, 64);      /* runc, containerd-shim, conmon... */
BPF_HASH(select_comms, struct st_comm, u32, 64);       /* --comm */
#if !ST_EXIT_TASK
BPF_HASH(exits, u32, struct st_exit, 65536);           /* fallback: exit facts gathered before the exit */
#endif
BPF_HASH(other_cgroups, u64, u32, 16384);             /* cgroups user space found not to be pods */
BPF_TABLE("lru_hash", u32, u32, parents, 16384);     /* child pid -> parent tgid, from fork */
BPF_PERCPU_ARRAY(lost, u64, ST_NPROBES);
BPF_PERCPU_ARRAY(counters, u64, ST_NCOUNTERS);
BPF_ARRAY(config, u64, 3);                             /* [0] arm window (ns), [1] nsfs dev, [2] last arm (ktime) */
#if ST_CLOSE_COUNTS
/* socket address -> connection established while armed, deleted when the socket reaches CLOSE: an
 * 8-byte key, and the churn's closed connections never push live ones out of the LRU */
BPF_TABLE("lru_hash", u64, struct st_conn, conns, 32768);
/* an active closer's counted close, kept past its socket's CLOSE for its orphan's reset: slots in
 * pairs, a pair chosen by a hash of the 4-tuple (orphan_pair). An array, not a hash map: one per
 * connection under churn, and an insert into a hash or LRU map cost ~1.3 us of the ~9 us per
 * connection (loopback churn, armed pod), a copy into a slot almost nothing. */
#define ST_ORPHAN_SLOTS 16384
BPF_ARRAY(orphans, struct st_conn, ST_ORPHAN_SLOTS);
BPF_HASH(close_counts, struct st_close_key, struct st_close_count, 16384);
#endif

static __always_inline void count_lost(int probe)
{
    u64 *n = lost.lookup(&probe);
    if (n)
        (*n)++;
}

static __always_inline void count(int what)
{
    u64 *n = counters.lookup(&what);
    if (n)
        (*n)++;
}

/* The current task's pod: by cgroup v2 id first (covers every process of a container, even
 * forked before user space saw it), then by tgid (--pid, or runtimes outside the unified tree). */
static __always_inline int current_task(struct st_task *out, u32 tgid)
{
    u64 cg = bpf_get_current_cgroup_id();
    struct st_task *t = pod_cgroups.lookup(&cg);
    if (!t)
        t = pod_tasks.lookup(&tgid);
    if (!t)
        return 0;
    *out = *t;
    return 1;
}

/* A cgroup user space has classified neither as a pod's nor as another's: a container younger
 * than the last scan. Its process events stream (flagged) so that user space classifies it at
 * once; after that the kernel filters it like any other. */
static __always_inline int unknown_cgroup(void)
{
    u64 cg = bpf_get_current_cgroup_id();
    return !pod_cgroups.lookup(&cg) && !other_cgroups.lookup(&cg);
}

/* Whether a process event is recorded: ST_SKIP when not; else the flags it carries
 * (ST_EV_UNKNOWN_CGROUP when only its unclassified cgroup let it through). */
#define ST_SKIP (-1)
static __always_inline int selection_flags(int selected)
{
    if (selected)
        return 0;
    return unknown_cgroup() ? ST_EV_UNKNOWN_CGROUP : ST_SKIP;
}

/* bcc needs each map named directly, hence one helper per comm map */
static __always_inline int runtime_comm(const char *comm)
{
    struct st_comm key = {};
    __builtin_memcpy(key.c, comm, 16);
    return runtime_comms.lookup(&key) != 0;
}

static __always_inline int selected_comm(const char *comm)
{
    struct st_comm key = {};
    __builtin_memcpy(key.c, comm, 16);
    return select_comms.lookup(&key) != 0;
}

static __always_inline void fill_event(struct st_event *e, u32 kind)
{
    __builtin_memset(e, 0, sizeof(*e));
    u64 id = bpf_get_current_pid_tgid();
    e->ts_ns = bpf_ktime_get_ns();
    e->cgroup_id = bpf_get_current_cgroup_id();
    e->kind = kind;
    e->pid = id >> 32;
    e->tid = (u32)id;
    e->exit_code = -1;
    bpf_get_current_comm(e->comm, sizeof(e->comm));
}

static __always_inline struct st_event *new_event(u32 kind, int probe)
{
    struct st_event *e = events.ringbuf_reserve(sizeof(struct st_event));
    if (!e) {
        count_lost(probe);
        return 0;
    }
    fill_event(e, kind);
    return e;
}

static __always_inline struct st_event *new_tcp_event(u32 kind, int probe)
{
    struct st_event *e = tcp_events.ringbuf_reserve(sizeof(struct st_event));
    if (!e) {
        count_lost(probe);
        return 0;
    }
    fill_event(e, kind);
    return e;
}

/* The current task's pid inside its container: short-lived processes (a preStop's
 * `nginx -s quit`) are gone before user space could read /proc/<pid>/status. */
static __always_inline void set_nspid(struct st_event *e, struct st_task *cur)
{
    int one = 1;
    u64 *dev = config.lookup(&one);
    struct bpf_pidns_info ns = {};
    if (dev && cur->pidns_ino &&
        bpf_get_ns_current_pid_tgid(*dev, cur->pidns_ino, &ns, sizeof(ns)) == 0)
        e->nspid = ns.tgid;
}

static __always_inline void arm(u32 pidx)
{
    u64 now = bpf_ktime_get_ns();
    u32 any = ST_AMBIGUOUS;
    armed.update(&pidx, &now);
    /* ambiguous endpoints stream while any pod is armed */
    armed.update(&any, &now);
    int last = 2;
    u64 *at = config.lookup(&last);
    if (at)
        *at = now;
}

/* When the pod was armed if it still is (now: bpf_ktime_get_ns(), read once per program run), else 0 */
static __always_inline u64 armed_since(u32 pidx, u64 now)
{
    int zero = 0;
    u64 *window = config.lookup(&zero);
    u64 *at = armed.lookup(&pidx);
    if (!at || !window || now - *at >= *window)
        return 0;
    return *at;
}

static __always_inline int is_armed(u32 pidx, u64 now)
{
    return armed_since(pidx, now) != 0;
}

static __always_inline int fatal_by_default(int sig)
{
    /* signal(7): default action Term or Core (CHLD CONT STOP TSTP TTIN TTOU URG WINCH are not) */
    return (sig >= 1 && sig <= 16) || (sig >= 24 && sig <= 27) || (sig >= 29 && sig <= 64);
}

static __always_inline int stop_signal(int sig)
{
    /* signals a runtime may send as a container's stop signal (STOPSIGNAL): HUP INT QUIT KILL USR2
     * TERM WINCH PWR */
    return sig == 1 || sig == 2 || sig == 3 || sig == 9 || sig == 12 || sig == 15 ||
           sig == 28 || sig == 30;
}

/* Does this signal start the pod's stop? Only a signal to a container's PID 1 does: the runtime's
 * stop signal (runc kill: whatever STOPSIGNAL is) and its final SIGKILL, or a terminating signal from
 * anyone (a preStop `nginx -s quit`, a `kubectl exec ... kill 1`). Not: reloads (HUP, USR2 from a
 * process in the pod), a master signalling its own workers (nginx QUITs old workers on reload,
 * php-fpm QUITs idle children), the runtime killing a timed-out exec probe, exec probes themselves.
 * A pod armed by mistake streams every close for the arm window: on a node with exec probes and
 * reloads that was 25,000 events/s from one running pod. */
static __always_inline int arms_pod(int sig, int runtime, struct st_task *tgt)
{
    if (!(tgt->flags & ST_TASK_INIT))
        return 0;
    if (runtime)
        return stop_signal(sig);
    return sig == 2 || sig == 3 || sig == 9 || sig == 15;
}

TRACEPOINT_PROBE(signal, signal_generate)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct st_task cur = {}, tgt = {};
    int cur_pod = current_task(&cur, tgid);
    u32 target = args->pid;
    struct st_task *tp = pod_tasks.lookup(&target);
    char comm[16];
    bpf_get_current_comm(comm, sizeof(comm));
    char tcomm[16];
    bpf_probe_read_kernel(tcomm, sizeof(tcomm), args->comm);
    int runtime = args->sig != 23 && args->sig != 17 && runtime_comm(comm);   /* not SIGURG/SIGCHLD */
    int sel = selection_flags(ST_FILTER_ALL || cur_pod || tp || runtime ||
                              selected_comm(comm) || selected_comm(tcomm));
    if (sel == ST_SKIP)
        return 0;
    if (tp) {
        tgt = *tp;
        if (arms_pod(args->sig, runtime, &tgt))
            arm(tgt.pidx);
    }
#if !ST_EXIT_TASK
    if (args->result == 0 && fatal_by_default(args->sig)) {
        /* A fatal default signal is delivered as SIGKILL to every thread (complete_signal's
         * shortcut): remember which signal it really was. */
        struct st_exit zero = {.code = -1};
        struct st_exit *x = exits.lookup_or_try_init(&target, &zero);
        if (x && x->pending != 9)
            x->pending = args->sig;
    }
#endif
    struct st_event *e = new_event(ST_KIND_SIGNAL_GENERATE, ST_PROBE_SIGNAL_GENERATE);
    if (!e)
        return 0;
    e->cidx = cur.cidx;
    e->flags = sel;
    set_nspid(e, &cur);
    e->sig = args->sig;
    e->code = args->code;
    e->result = args->result;
    e->target_pid = target;
    e->target_cidx = tgt.cidx;
    bpf_probe_read_kernel(e->target_comm, 16, args->comm);
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(signal, signal_deliver)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct st_task cur = {};
    int cur_pod = current_task(&cur, tgid);
    char comm[16];
    bpf_get_current_comm(comm, sizeof(comm));
    int sel = selection_flags(ST_FILTER_ALL || cur_pod || selected_comm(comm));
    if (sel == ST_SKIP)
        return 0;
    u32 handler = args->sa_handler == 0 ? ST_HANDLER_DEFAULT :
                  args->sa_handler == 1 ? ST_HANDLER_IGNORE : ST_HANDLER_HANDLER;
#if !ST_EXIT_TASK
    struct st_exit zero = {.code = -1};
    struct st_exit *x = exits.lookup(&tgid);
    if (handler == ST_HANDLER_DEFAULT && fatal_by_default(args->sig)) {
        if (!x) {
            exits.update(&tgid, &zero);
            x = exits.lookup(&tgid);
        }
        if (x)
            x->sig = (args->sig == 9 && x->pending) ? x->pending : args->sig;
    } else if (x && x->pending == args->sig) {
        x->pending = 0;   /* handled: not what kills it */
    }
#endif
    struct st_event *e = new_event(ST_KIND_SIGNAL_DELIVER, ST_PROBE_SIGNAL_DELIVER);
    if (!e)
        return 0;
    e->cidx = cur.cidx;
    e->flags = sel;
    set_nspid(e, &cur);
    e->sig = args->sig;
    e->code = args->code;
    e->handler = handler;
    events.ringbuf_submit(e, 0);
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_fork)
{
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    u32 child = args->child_pid;
    struct st_task cur = {};
    parents.update(&child, &parent);
    /* a pod process's child is a pod process: signals to it (nginx workers) resolve at once */
    if (current_task(&cur, parent)) {
        cur.flags = 0;
        pod_tasks.update(&child, &cur);
    }
    return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct st_task cur = {};
    int cur_pod = current_task(&cur, tgid);
    char comm[16];
    bpf_get_current_comm(comm, sizeof(comm));
#if !ST_EXIT_TASK
    /* a new image: exec SIGKILLs the other threads (de_thread), which is no death of the process */
    exits.delete(&tgid);
#endif
    if (cur_pod) {
        struct st_task *known = pod_tasks.lookup(&tgid);
        if (!known)
            pod_tasks.update(&tgid, &cur);
    }
    /* An exec in a cgroup user space has not classified yet may be a new container's first
     * process: stream it so user space rescans at once instead of at its next periodic scan. */
    int sel = selection_flags(ST_FILTER_ALL || cur_pod || selected_comm(comm));
    if (sel == ST_SKIP)
        return 0;
    struct st_event *e = new_event(ST_KIND_PROCESS_EXEC, ST_PROBE_PROCESS_EXEC);
    if (!e)
        return 0;
    e->cidx = cur.cidx;
    e->flags = sel;
    set_nspid(e, &cur);
    u32 *ppid = parents.lookup(&tgid);
    if (ppid)
        e->ppid = *ppid;
    unsigned short loc = args->data_loc_filename & 0xFFFF;
    bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), (void *)args + loc);
    events.ringbuf_submit(e, 0);
    return 0;
}

#if !ST_EXIT_TASK
/* Fallback (no task_struct.exit_code in the BTF): exit_group()'s argument. A syscall tracepoint
 * puts every task of the node on the syscall slow path (~20 ns per syscall), hence only then. */
TRACEPOINT_PROBE(syscalls, sys_enter_exit_group)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct st_task cur = {};
    char comm[16];
    bpf_get_current_comm(comm, sizeof(comm));
    if (!(ST_FILTER_ALL || current_task(&cur, tgid) || selected_comm(comm) || unknown_cgroup()))
        return 0;
    struct st_exit zero = {.code = -1};
    struct st_exit *x = exits.lookup_or_try_init(&tgid, &zero);
    if (x)
        x->code = args->error_code & 0xff;
    return 0;
}
#endif

/* The exit status as wait(2) would see it, read from the exiting task itself (this runs in its
 * context): do_exit() stored it in task_struct.exit_code (offset ST_TASK_EXIT_CODE, from the
 * running kernel's BTF) before the tracepoint: (status & 0xff) << 8 for an exit, the signal
 * number (| 0x80 with a core dump) for a death by signal. A group exit (exit_group(), a fatal
 * signal, delivered as SIGKILL to the other threads) gives every thread the group's code. */
static __always_inline void exit_status(struct st_event *e, u32 tgid)
{
#if ST_EXIT_TASK
    s32 status = 0;
    u64 task = bpf_get_current_task();
    if (bpf_probe_read_kernel(&status, sizeof(status), (void *)(task + ST_TASK_EXIT_CODE)) != 0)
        return;
    if (status & 0x7f) {
        e->exit_signal = status & 0x7f;
    } else {
        e->exit_code = (status >> 8) & 0xff;
    }
#else
    struct st_exit *x = exits.lookup(&tgid);
    if (x) {
        e->exit_signal = x->sig;
        e->exit_code = x->sig ? -1 : x->code;
    }
#endif
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    struct st_task cur = {};
    int cur_pod = current_task(&cur, tgid);
    if (!args->group_dead) {
        if (tid != tgid)
            pod_tasks.delete(&tid);
        return 0;
    }
    char comm[16];
    bpf_get_current_comm(comm, sizeof(comm));
    int sel = selection_flags(ST_FILTER_ALL || cur_pod || selected_comm(comm));
    if (sel != ST_SKIP) {
        if (cur_pod && (cur.flags & ST_TASK_INIT))
            arm(cur.pidx);   /* a container's init is gone: the pod is stopping */
        struct st_event *e = new_event(ST_KIND_PROCESS_EXIT, ST_PROBE_PROCESS_EXIT);
        if (e) {
            e->cidx = cur.cidx;
            e->flags = sel;
            set_nspid(e, &cur);
            exit_status(e, tgid);
            events.ringbuf_submit(e, 0);
        }
    }
#if !ST_EXIT_TASK
    exits.delete(&tgid);
#endif
    pod_tasks.delete(&tgid);
    if (tid != tgid)
        pod_tasks.delete(&tid);
    return 0;
}

/* ---- TCP ------------------------------------------------------------------------------ */

/* A TCP socket's tuple and state change, as attributed: small, so that the frequent transitions
 * that do not stream cost no st_event; the ring buffer event is filled only when one streams. */
struct st_tcp {
    u64 skaddr;
    u64 now;            /* bpf_ktime_get_ns(), 0 until read (tcp_now): one clock read per run */
    u8 saddr[16];       /* IPv4 as ::ffff:a.b.c.d; 8-byte aligned (is_wildcard) */
    u8 daddr[16];
    s32 old_state;
    s32 new_state;
    u32 reason;
    u32 pidx;
    u32 role;
    u16 family;
    u16 sport;
    u16 dport;
    u16 early;          /* ST_EARLY_TRIED: the close was already offered to the count (counted_early) */
};

static __always_inline u64 tcp_now(struct st_tcp *t)
{
    if (!t->now)
        t->now = bpf_ktime_get_ns();
    return t->now;
}

/* Tracepoint arrays are read with bpf_probe_read_kernel: the verifier refuses loads through a
 * ctx pointer plus an offset. */
static __always_inline void addr16(u8 *dst, u16 family, const u8 *a4, const u8 *a6)
{
    if (family == ST_FAMILY_INET6) {
        bpf_probe_read_kernel(dst, 16, a6);
    } else {
        __builtin_memset(dst, 0, 10);
        dst[10] = 0xff;
        dst[11] = 0xff;
        bpf_probe_read_kernel(dst + 12, 4, a4);
    }
}

static __always_inline int is_wildcard(const u8 *a)
{
    /* 0.0.0.0 as ::ffff:0.0.0.0, or :: */
    u64 hi = *(u64 *)a;
    u32 mid = *(u32 *)(a + 8), lo = *(u32 *)(a + 12);
    return hi == 0 && lo == 0 && (mid == 0 || mid == 0xffff0000);
}

/* Owner of an endpoint: exact (addr, port) learned for the pod, else its wildcard listener. Most
 * sockets are no pod's: a port no endpoint has (an array lookup) spares both hash lookups. */
static __always_inline u32 ep_owner(const u8 *addr, u16 port)
{
    u32 idx = port;
    u8 *used = endpoint_ports.lookup(&idx);
    if (!used || !*used)
        return 0;
    struct st_ep_key key = {.port = port};
    __builtin_memcpy(key.addr, addr, 16);
    u32 *p = endpoints.lookup(&key);
    if (p)
        return *p;
    __builtin_memset(key.addr, 0, 16);
    p = endpoints.lookup(&key);
    return p ? *p : 0;
}

/* Decide whether a TCP event streams; fill pidx/role. Returns 1 to stream. The cheap refusals
 * come first: not a pod's endpoint, or a pod's that is not stopping (the current task is looked
 * up only when it can matter: an ambiguous endpoint, or an event that streams). */
static __always_inline int tcp_attribute(struct st_tcp *t, u32 *cidx)
{
    u32 role = ST_ROLE_SERVER;
    u32 pidx = ep_owner(t->saddr, t->sport);
    if (!pidx) {
        role = ST_ROLE_CLIENT;
        pidx = ep_owner(t->daddr, t->dport);
    }
    if (!pidx)
        role = ST_ROLE_NONE;
    t->role = role;
    t->pidx = pidx;
    if (!ST_FILTER_ALL) {
        if (!pidx) {
            count(ST_COUNT_TCP_NOT_POD);
            return 0;
        }
        if (pidx != ST_AMBIGUOUS && !is_armed(pidx, tcp_now(t))) {
            count(ST_COUNT_TCP_UNARMED);
            return 0;
        }
    }
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct st_task cur = {};
    int cur_pod = current_task(&cur, tgid);
    int ambiguous = pidx == ST_AMBIGUOUS;
    if (ambiguous && cur_pod)
        /* several pods claim the endpoint (each pod's 127.0.0.1:9000): loopback traffic runs
         * in a task of the pod's own network namespace, so break the tie by the current pod */
        pidx = cur.pidx;
    if (cur_pod && cur.pidx == pidx)
        *cidx = cur.cidx;
    t->pidx = pidx;
    if (ST_FILTER_ALL)
        return 1;
    if (ambiguous && !is_armed(pidx, tcp_now(t))) {     /* other pods' armed state was checked above */
        count(ST_COUNT_TCP_UNARMED);
        return 0;
    }
    return 1;
}

/* Transitions that every healthy connection makes (connect, accept, the orderly close after the
 * first FIN) are counted, not streamed: the first close of an ESTABLISHED socket (FIN_WAIT1 = this
 * side closed, CLOSE_WAIT = the peer closed, CLOSE = reset), listener changes, failed handshakes
 * and resets are what explains a dropped request. ST_TCP_ALL_STATES streams every transition. */
static __always_inline int routine_transition(int old, int new)
{
    if (ST_TCP_ALL_STATES)
        return 0;
    if (new == ST_TCP_ESTABLISHED && (old == ST_TCP_SYN_SENT || old == ST_TCP_SYN_RECV))
        return 1;                                  /* handshake completed */
    if (old == ST_TCP_LISTEN && new == ST_TCP_SYN_RECV)
        return 1;                                  /* a listener's child socket created */
    if (old == ST_TCP_CLOSE && new == ST_TCP_SYN_SENT)
        return 1;                                  /* connect() started */
    if (old == ST_TCP_FIN_WAIT1 || old == ST_TCP_FIN_WAIT2 || old == ST_TCP_TIME_WAIT || old == ST_TCP_LAST_ACK
        || old == ST_TCP_CLOSING)
        return 1;                                  /* the rest of a close already streamed */
    if (old == ST_TCP_CLOSE_WAIT && new == ST_TCP_LAST_ACK)
        return 1;                                  /* orderly close */
    return 0;
}

/* listen() (-> LISTEN) or the close of a listener (LISTEN -> CLOSE) */
static __always_inline int is_listener_change(int old, int new)
{
    return new == ST_TCP_LISTEN || (old == ST_TCP_LISTEN && new == ST_TCP_CLOSE);
}

static __always_inline void fill_tcp_event(struct st_event *e, struct st_tcp *t, u32 cidx)
{
    e->cidx = cidx;
    e->skaddr = t->skaddr;
    e->pidx = t->pidx;
    e->role = t->role;
    e->old_state = t->old_state;
    e->new_state = t->new_state;
    e->reason = t->reason;
    e->family = t->family;
    e->sport = t->sport;
    e->dport = t->dport;
    __builtin_memcpy(e->saddr, t->saddr, 16);
    __builtin_memcpy(e->daddr, t->daddr, 16);
}

#if ST_CLOSE_COUNTS
/* ---- counted closes: a stopping pod under churn closes tens of thousands of healthy connections a
 * second; streaming each (two events per connection when both ends are the pod's) cost a third of
 * its throughput and lost events. What a verdict needs still streams: resets, refusals, listener
 * changes, closes with data in flight, closes by an exiting process, the closes of connections open
 * when the pod was armed, and a few examples per bucket. A connection is known to have been
 * established while its pod was armed by its entry in conns, made at the handshake (tracked only
 * while some pod is armed: config[2]); without one (open at arming, or evicted) its close streams.
 * The entry goes when the socket reaches CLOSE (its address is then reused by the next socket);
 * an active closer's counted close moves to orphans, by 4-tuple, for a reset its orphan (the
 * TIME_WAIT / FIN_WAIT2 mini socket, at an address of its own) may send. */

#define ST_EARLY_TRIED 1
#define ST_ORPHAN_NS (60ULL * 1000000000ULL)   /* TCP_TIMEWAIT_LEN: an orphan lives no longer */

static __always_inline u64 some_pod_armed(void)
{
    int zero = 0, last = 2;
    u64 *window = config.lookup(&zero);
    u64 *at = config.lookup(&last);
    if (!window || !at || !*at)                /* never armed: no clock read */
        return 0;
    u64 now = bpf_ktime_get_ns();
    return now - *at < *window ? now : 0;
}

static __always_inline int is_handshake(int old, int new)
{
    return new == ST_TCP_ESTABLISHED && (old == ST_TCP_SYN_SENT || old == ST_TCP_SYN_RECV);
}

static __always_inline int is_first_close(int old, int new)
{
    return old == ST_TCP_ESTABLISHED && (new == ST_TCP_FIN_WAIT1 || new == ST_TCP_CLOSE_WAIT);
}

static __always_inline void tuple_key(struct st_ctuple *k, struct st_tcp *t)
{
    __builtin_memcpy(k->saddr, t->saddr, 16);
    __builtin_memcpy(k->daddr, t->daddr, 16);
    k->sport = t->sport;
    k->dport = t->dport;
}

static __always_inline int same_tuple(const struct st_ctuple *a, const struct st_ctuple *b)
{
    const u64 *x = (const u64 *)a, *y = (const u64 *)b;
    return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3] && x[4] == y[4];
}

/* A handshake completed on an armed pod's endpoint: remember when, and the pod, port and side its
 * close is counted under, so that the close can be counted before the socket is read. */
static __always_inline int note_established(struct st_tcp *t)
{
    count(ST_COUNT_TCP_ROUTINE);
    u32 role = ST_ROLE_SERVER;
    u16 port = t->sport;
    u32 pidx = ep_owner(t->saddr, t->sport);
    if (!pidx) {
        role = ST_ROLE_CLIENT;
        port = t->dport;
        pidx = ep_owner(t->daddr, t->dport);
    }
    if (!pidx || !is_armed(pidx, tcp_now(t)))     /* ambiguous endpoints: while any pod is armed */
        return 0;
    struct st_conn c = {};
    u64 id = bpf_get_current_pid_tgid();
    c.skaddr = t->skaddr;
    c.est_ns = t->now;
    c.est_pid = id >> 32;
    c.est_tid = (u32)id;
    c.est_old = t->old_state;
    c.counted.pidx = pidx;
    c.counted.port = port;
    c.counted.role = role;
    tuple_key(&c.tuple, t);
    bpf_get_current_comm(c.est_comm, sizeof(c.est_comm));
    u64 sk = t->skaddr;
    conns.update(&sk, &c);
    return 0;
}

static __always_inline u32 sk_u32(u64 sk, int off)
{
    u32 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), (void *)(sk + off));
    return v;
}

/* An orderly close with nothing in flight as far as the kernel can tell: this side closed (FIN) with
 * no unread data (with unread data the kernel resets instead; shutdown() may leave some) and not by
 * a process in its exit (connections cut as it died); or the peer closed while all we sent was
 * acknowledged (else the peer left with our response in flight). Offsets from the kernel's BTF. */
static __always_inline int routine_close(u64 sk, int new)
{
    if (new == ST_TCP_FIN_WAIT1) {
        u32 flags = 0;
        u64 task = bpf_get_current_task();
        if (bpf_probe_read_kernel(&flags, sizeof(flags), (void *)(task + ST_TASK_FLAGS)) != 0 ||
            (flags & ST_PF_EXITING))
            return 0;
        return sk_u32(sk, ST_TP_RCV_NXT) == sk_u32(sk, ST_TP_COPIED_SEQ);
    }
    return sk_u32(sk, ST_TP_WRITE_SEQ) == sk_u32(sk, ST_TP_SND_UNA);
}

/* Count the close under key (pidx, port, role filled), or return 0 when it streams as one of its
 * bucket's examples (or the map is full). */
static __always_inline int count_close(struct st_close_key *key, int new, u64 now)
{
    key->bucket = now / (ST_CLOSE_BUCKET_MS * 1000000ULL);
    key->new_state = new;
    struct st_close_count *n = close_counts.lookup(key);
    if (!n) {
        struct st_close_count first = {.sampled = 1};
        close_counts.update(key, &first);
        return 0;
    }
    if (n->sampled < ST_CLOSE_SAMPLE) {
        n->sampled++;            /* racy across CPUs: a sample of 4 may be 5 */
        return 0;
    }
    lock_xadd(&n->counted, 1);
    return 1;
}

/* What a counted close keeps for its take-back: who closed, when */
static __always_inline void note_close(struct st_conn *c, int new, u64 now, u32 cidx)
{
    u64 id = bpf_get_current_pid_tgid();
    c->close_ns = now;
    c->close_pid = id >> 32;
    c->close_tid = (u32)id;
    c->close_cidx = cidx;
    c->close_new = new;
    bpf_get_current_comm(c->close_comm, sizeof(c->close_comm));
}

/* The first close of a connection noted at its handshake, decided before the socket's tuple is read:
 * 1 when counted. *tried: the close was offered to the count (a bucket's example, or not routine),
 * so the full path streams it without counting it again. An entry older than its pod's arming may
 * be a reused address's (a socket that reached CLOSE while no pod was armed keeps its entry): the
 * full path checks its 4-tuple. */
static __always_inline int close_counted_early(u64 sk, int new, u16 *tried)
{
    u64 now = some_pod_armed();
    if (!now)
        return 0;
    struct st_conn *c = conns.lookup(&sk);
    if (!c || c->close_ns || c->counted.pidx == ST_AMBIGUOUS)
        return 0;
    u32 pidx = c->counted.pidx;
    u64 since = armed_since(pidx, now);
    if (!since || c->est_ns < since)
        return 0;
    *tried = ST_EARLY_TRIED;
    if (!routine_close(sk, new) || !count_close(&c->counted, new, now))
        return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct st_task cur = {};
    u32 cidx = current_task(&cur, tgid) && cur.pidx == pidx ? cur.cidx : 0;
    note_close(c, new, now, cidx);
    return 1;
}

/* The first of the pair of orphans slots a 4-tuple may use: its 9 words (not the pad) mixed, then
 * folded so that the high bits (the port pair's dport) reach the index too. */
static __always_inline u32 orphan_pair(const struct st_ctuple *k)
{
    const u32 *w = (const u32 *)k;
    u32 h = 0x811c9dc5;
#pragma unroll
    for (int i = 0; i < 9; i++)
        h = (h ^ w[i]) * 0x01000193;
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    return (h & (ST_ORPHAN_SLOTS / 2 - 1)) * 2;
}

/* A slot an orphan of key may take: free (close_ns 0: never used, or taken back), expired, or key's */
static __always_inline int orphan_slot_usable(struct st_conn *s, const struct st_ctuple *key, u64 now)
{
    return !s->close_ns || now - s->close_ns >= ST_ORPHAN_NS || same_tuple(&s->tuple, key);
}

/* Keep a counted close for its orphan's reset: in its pair's slot already holding its 4-tuple, else a
 * usable one, else over the older of the two (as an LRU map evicts: that one loses its take-back). */
static __always_inline void keep_orphan(struct st_conn *c, u64 now)
{
    u32 i = orphan_pair(&c->tuple), j = i + 1;
    struct st_conn *a = orphans.lookup(&i), *b = orphans.lookup(&j);
    if (!a || !b)
        return;
    struct st_conn *slot = a;
    if (same_tuple(&b->tuple, &c->tuple) ||
        (!orphan_slot_usable(a, &c->tuple, now) && (orphan_slot_usable(b, &c->tuple, now) || b->close_ns < a->close_ns)))
        slot = b;
    __builtin_memcpy(slot, c, sizeof(*c));
}

/* A socket reached CLOSE: forget its connection; an active closer's counted close moves to orphans. */
static __always_inline void forget_conn(u64 sk, int old)
{
    u64 now = some_pod_armed();
    if (!now)
        return;
    if (old == ST_TCP_FIN_WAIT2 || old == ST_TCP_TIME_WAIT || old == ST_TCP_CLOSING) {
        struct st_conn *c = conns.lookup(&sk);
        if (c && c->close_ns)
            keep_orphan(c, now);
    }
    conns.delete(&sk);
}

/* Stream what conns knows of a connection before one of its events streams: its handshake (so the
 * report knows it was established after the pod was armed) and a close that was counted (the
 * connection turned out not to be routine: a reset followed), taken back from its count. */
static __always_inline void emit_known(struct st_tcp *t, struct st_conn *c)
{
    struct st_event *e = new_tcp_event(ST_KIND_TCP_STATE, ST_PROBE_TCP_STATE);
    if (e) {
        fill_tcp_event(e, t, 0);
        e->ts_ns = c->est_ns;
        e->pid = c->est_pid;
        e->tid = c->est_tid;
        __builtin_memcpy(e->comm, c->est_comm, 16);
        e->skaddr = c->skaddr;
        e->old_state = c->est_old;
        e->new_state = ST_TCP_ESTABLISHED;
        e->reason = 0;
        events.ringbuf_submit(e, 0);
    }
    if (!c->close_ns)
        return;
    struct st_close_count *n = close_counts.lookup(&c->counted);
    if (n)
        lock_xadd(&n->counted, -1);
    e = new_tcp_event(ST_KIND_TCP_STATE, ST_PROBE_TCP_STATE);
    if (!e)
        return;
    fill_tcp_event(e, t, c->close_cidx);
    e->ts_ns = c->close_ns;
    e->pid = c->close_pid;
    e->tid = c->close_tid;
    __builtin_memcpy(e->comm, c->close_comm, 16);
    e->skaddr = c->skaddr;
    e->old_state = ST_TCP_ESTABLISHED;
    e->new_state = c->close_new;
    e->reason = 0;
    events.ringbuf_submit(e, 0);
}

/* A reset of a socket conns does not know (an orphan's, or none): a counted close of its 4-tuple
 * whose socket reached CLOSE is taken back. */
static __always_inline void orphan_known(struct st_tcp *t)
{
    struct st_ctuple key = {};
    tuple_key(&key, t);
    u32 i = orphan_pair(&key), j = i + 1;
    struct st_conn *a = orphans.lookup(&i), *b = orphans.lookup(&j);
    if (!a || !b)
        return;
    struct st_conn *c = a->close_ns && same_tuple(&a->tuple, &key) ? a :
                        b->close_ns && same_tuple(&b->tuple, &key) ? b : 0;
    if (!c)
        return;
    if (tcp_now(t) - c->close_ns < ST_ORPHAN_NS)
        emit_known(t, c);
    c->close_ns = 0;         /* taken back (or expired): the slot is free */
}

/* An armed pod's TCP event that would stream: counted instead when it is the routine close of a
 * connection established while armed (1), else what conns knew of it streams first (0). */
static __always_inline int counted_or_known(struct st_tcp *t, u32 kind, u32 cidx)
{
    u64 sk = t->skaddr;
    struct st_conn *c = conns.lookup(&sk);
    if (c) {
        struct st_ctuple key = {};
        tuple_key(&key, t);
        if (!same_tuple(&c->tuple, &key)) {       /* a reused address: another connection's entry */
            conns.delete(&sk);
            c = 0;
        }
    }
    if (!c) {
        if (kind != ST_KIND_TCP_STATE)
            orphan_known(t);
        return 0;
    }
    if (kind == ST_KIND_TCP_STATE && !c->close_ns && !t->early && t->pidx != ST_AMBIGUOUS &&
        is_first_close(t->old_state, t->new_state) && routine_close(sk, t->new_state)) {
        struct st_close_key *key = &c->counted;
        key->pidx = t->pidx;
        key->port = t->role == ST_ROLE_SERVER ? t->sport : t->dport;
        key->role = t->role;
        if (count_close(key, t->new_state, tcp_now(t))) {
            note_close(c, t->new_state, t->now, cidx);
            return 1;
        }
    }
    emit_known(t, c);
    conns.delete(&sk);
    return 0;
}
#endif

static __always_inline int emit_tcp(struct st_tcp *t, u32 kind, int probe)
{
    u32 cidx = 0;
    if (!tcp_attribute(t, &cidx))
        return 0;
#if ST_CLOSE_COUNTS
    if (counted_or_known(t, kind, cidx))
        return 0;
#endif
    struct st_event *e = new_tcp_event(kind, probe);
    if (!e)
        return 0;
    fill_tcp_event(e, t, cidx);
    events.ringbuf_submit(e, 0);
    return 0;
}

/* Listener transitions (listen(), close() of a listener) are rare and run in the owner's context:
 * a pod's (or a not yet classified cgroup's) always reach user space, which learns the pod's
 * endpoints from them instead of rescanning /proc/<pid>/net/tcp (every TIME_WAIT socket of a
 * churning pod) every second. Flagged ST_EV_INFO_ONLY when the recording would not keep them. */
static __always_inline int emit_listener(struct st_tcp *t)
{
    u32 cidx = 0;
    int stream = tcp_attribute(t, &cidx);
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    struct st_task cur = {};
    int cur_pod = current_task(&cur, tgid);
    int unknown = !cur_pod && unknown_cgroup();
    if (!stream && !cur_pod && !unknown)
        return 0;
    if (cur_pod) {
        t->pidx = cur.pidx;
        cidx = cur.cidx;
    }
    struct st_event *e = new_tcp_event(ST_KIND_TCP_STATE, ST_PROBE_TCP_STATE);
    if (!e)
        return 0;
    fill_tcp_event(e, t, cidx);
    e->flags = ST_EV_LISTENER | (stream ? 0 : ST_EV_INFO_ONLY) | (unknown ? ST_EV_UNKNOWN_CGROUP : 0);
    events.ringbuf_submit(e, 0);
    return 0;
}

/* A TCP socket changed state (its tuple already read): learn listeners, stream or count. */
static __always_inline int tcp_state(struct st_tcp *t)
{
    if (t->new_state == ST_TCP_LISTEN) {
        /* listen() runs in the owner's context: learn the pod's endpoint in the kernel */
        u32 tgid = bpf_get_current_pid_tgid() >> 32;
        struct st_task cur = {};
        if (current_task(&cur, tgid)) {
            struct st_ep_key key = {.port = t->sport};
            if (!is_wildcard(t->saddr))
                __builtin_memcpy(key.addr, t->saddr, 16);
            u32 *owner = endpoints.lookup(&key);
            u32 value = cur.pidx;
            if (owner && *owner != cur.pidx)
                value = ST_AMBIGUOUS;
            u32 idx = t->sport;
            u8 used = 1;
            endpoint_ports.update(&idx, &used);     /* first: the probes look here first */
            endpoints.update(&key, &value);
        }
    }
    if (is_listener_change(t->old_state, t->new_state))
        return emit_listener(t);
#if ST_CLOSE_COUNTS
    if (is_handshake(t->old_state, t->new_state))
        return note_established(t);
    emit_tcp(t, ST_KIND_TCP_STATE, ST_PROBE_TCP_STATE);
    if (t->new_state == ST_TCP_CLOSE)        /* a reset or failed connection: gone too */
        forget_conn(t->skaddr, t->old_state);
    return 0;
#else
    return emit_tcp(t, ST_KIND_TCP_STATE, ST_PROBE_TCP_STATE);
#endif
}

/* Routine transitions are counted before the socket is read; a handshake is read too while some pod
 * is armed (its connection's close may then be counted; *now: the clock read then), and the first
 * close of a connection noted at its handshake is counted from conns and the socket's sequence
 * numbers alone (*tried: see close_counted_early). A socket reaching CLOSE forgets its connection. */
static __always_inline int counted_early(u64 sk, int old, int new, int listener, u16 *tried, u64 *now)
{
    if (listener)
        return 0;
#if ST_CLOSE_COUNTS
    if (is_first_close(old, new))
        return close_counted_early(sk, new, tried);
#endif
    if (!routine_transition(old, new))
        return 0;
#if ST_CLOSE_COUNTS
    if (is_handshake(old, new) && (*now = some_pod_armed()))
        return 0;
    if (new == ST_TCP_CLOSE)
        forget_conn(sk, old);
#endif
    count(ST_COUNT_TCP_ROUTINE);
    return 1;
}

#if ST_TCP_RAW
/* inet_sock_set_state as a raw tracepoint: (const struct sock *sk, int oldstate, int newstate),
 * no trace record filled by the kernel for every state change of every socket on the node. The
 * socket's fields are read here, only for the transitions that are not routine, the way the
 * tracepoint's TP_fast_assign reads them, at offsets taken from the running kernel's BTF
 * (ST_SK_*, ST_INET_*: sigtrace/backends/bpf/kernel.py socket_layout), never from the compile
 * headers. Each read costs a helper call: the fields come in windows (ST_*_WIN bytes from
 * ST_*_BASE), one read each. */
static __always_inline u16 win_u16(const u64 *win, int off)
{
    return *(const u16 *)((const u8 *)win + off);
}

static __always_inline u16 port_of(u16 be)
{
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    return __builtin_bswap16(be);
#else
    return be;
#endif
}

static __always_inline void v4mapped(u8 *dst, const u64 *win, int off)
{
    __builtin_memset(dst, 0, 10);
    dst[10] = 0xff;
    dst[11] = 0xff;
    __builtin_memcpy(dst + 12, (const u8 *)win + off, 4);
}

RAW_TRACEPOINT_PROBE(inet_sock_set_state)
{
    const u8 *sk = (const u8 *)ctx->args[0];
    int old = (int)ctx->args[1], new = (int)ctx->args[2];
    int listener = is_listener_change(old, new);
    /* most transitions of a churning server are routine: decided before the socket is read, even
     * its protocol (one read less per run). SCTP's states (mapped onto TCP's) make no transition
     * counted there and conns holds TCP sockets only; DCCP's (gone in 6.16) may count as routine. */
    u16 tried = 0;
    u64 now = 0;
    if (counted_early((u64)sk, old, new, listener, &tried, &now))
        return 0;
    u16 protocol = 0;
    bpf_probe_read_kernel(&protocol, sizeof(protocol), sk + ST_SK_PROTOCOL);
    if (protocol != 6 /* IPPROTO_TCP */)
        return 0;
    /* sock_common: skc_daddr, skc_dport, skc_family; inet_sock: inet_saddr, inet_sport */
    u64 common[(ST_SKC_WIN + 7) / 8], inet[(ST_INET_WIN + 7) / 8];
    bpf_probe_read_kernel(common, ST_SKC_WIN, sk + ST_SKC_BASE);
    bpf_probe_read_kernel(inet, ST_INET_WIN, sk + ST_INET_BASE);
    struct st_tcp t = {};
    t.skaddr = (u64)sk;
    t.now = now;
    t.early = tried;
    t.old_state = old;
    t.new_state = new;
    t.family = win_u16(common, ST_SK_FAMILY - ST_SKC_BASE);
    t.sport = port_of(win_u16(inet, ST_INET_SPORT - ST_INET_BASE));
    t.dport = port_of(win_u16(common, ST_SK_DPORT - ST_SKC_BASE));
    if (t.family == ST_FAMILY_INET6) {
        bpf_probe_read_kernel(t.saddr, 16, sk + ST_SK_V6_RCV_SADDR);
        bpf_probe_read_kernel(t.daddr, 16, sk + ST_SK_V6_DADDR);
    } else {
        v4mapped(t.saddr, inet, ST_INET_SADDR - ST_INET_BASE);
        v4mapped(t.daddr, common, ST_SK_DADDR - ST_SKC_BASE);
    }
    return tcp_state(&t);
}
#else
TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != 6 /* IPPROTO_TCP */)
        return 0;
    int old = args->oldstate, new = args->newstate;
    int listener = is_listener_change(old, new);
    /* most transitions of a churning server are routine: decided before anything is copied */
    u16 tried = 0;
    u64 now = 0;
    if (counted_early((u64)args->skaddr, old, new, listener, &tried, &now))
        return 0;
    struct st_tcp t = {};
    t.skaddr = (u64)args->skaddr;
    t.now = now;
    t.early = tried;
    t.old_state = old;
    t.new_state = new;
    t.family = args->family;
    t.sport = args->sport;
    t.dport = args->dport;
    addr16(t.saddr, args->family, args->saddr, args->saddr_v6);
    addr16(t.daddr, args->family, args->daddr, args->daddr_v6);
    return tcp_state(&t);
}
#endif

TRACEPOINT_PROBE(tcp, tcp_receive_reset)
{
    struct st_tcp t = {};
    t.skaddr = (u64)args->skaddr;
    t.family = args->family;
    t.sport = args->sport;
    t.dport = args->dport;
    addr16(t.saddr, args->family, args->saddr, args->saddr_v6);
    addr16(t.daddr, args->family, args->daddr, args->daddr_v6);
    return emit_tcp(&t, ST_KIND_TCP_RESET_RECEIVED, ST_PROBE_TCP_RESET_RECEIVED);
}

TRACEPOINT_PROBE(tcp, tcp_send_reset)
{
    struct st_tcp t = {};
    t.skaddr = (u64)args->skaddr;
#if ST_SR_HAS_STATE
    t.old_state = args->state;
#endif
#if ST_SR_HAS_REASON
    t.reason = args->reason;
#endif
#if ST_SR_SOCKADDR
    /* >= 6.10: sockaddr_in/in6, from the socket or (no socket: SYN to a closed port) from the
     * packet, reversed so that saddr is our side */
    u16 fam = *(u16 *)args->saddr;
    t.family = fam;
    t.sport = ((u16)args->saddr[2] << 8) | args->saddr[3];
    t.dport = ((u16)args->daddr[2] << 8) | args->daddr[3];
    /* sockaddr_in: addr at 4; sockaddr_in6: addr at 8 */
    addr16(t.saddr, fam, (const u8 *)args->saddr + 4, (const u8 *)args->saddr + 8);
    addr16(t.daddr, fam, (const u8 *)args->daddr + 4, (const u8 *)args->daddr + 8);
#else
#if ST_SR_HAS_FAMILY
    t.family = args->family;
#else
    t.family = ST_FAMILY_INET;
#endif
    t.sport = args->sport;
    t.dport = args->dport;
    addr16(t.saddr, t.family, args->saddr, args->saddr_v6);
    addr16(t.daddr, t.family, args->daddr, args->daddr_v6);
#endif
    return emit_tcp(&t, ST_KIND_TCP_RESET_SENT, ST_PROBE_TCP_RESET_SENT);
}
