// SPDX-License-Identifier: Apache-2.0 OR GPL-2.0-only
// The ring-buffer event source's kernel side (webhook/runtime/sources/ringbuf.py builds, loads and
// decodes it). Same probes and facts as the bpftrace program (bpftrace_program.py), but each event
// is ONE variable-length binary record in ONE ring buffer, and userspace is woken only when a lot
// of data is pending (BPF_RB_NO_WAKEUP; the reader polls on a short timeout): bpftrace's
// wakeup-per-record costs the traced process ~8 us of system time per event.
//
// Record: struct hdr, then a kind-specific fixed part, then strings as (u16 length, bytes). A
// string read to its full size without finding its NUL sets HDR_TRUNC (the rules see it). Opens
// and chdir/fchdir add one more string the kernel names: the directory a relative path starts
// from (opens), the new cwd (chdir/fchdir), so the userspace fd table (which never sees close,
// fcntl(F_DUPFD) or fds passed over sockets) is not what names the file.
// probes.h (generated from bpftrace_program.PROBES and the kernel's syscall tracepoint formats)
// lists the syscalls: PROBE(id, syscall, kind, s0, s1, s2) with the argument positions of its
// strings (-1: none).
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#define STR_MAX 4097   /* PATH_MAX + 1: a string this long (no NUL within PATH_MAX) is truncated */
#define NAME_RD 256    /* dentry / kernfs names (NAME_MAX + NUL) */
#define ARGV_MAX 4096
#define SCRATCH 32768
#define OFF_MASK 0x3fff /* every string starts below 16 KiB: start + STR_MAX stays inside SCRATCH */
#define IDX(x) ((x) & (SCRATCH - 1))
#define HDR_TRUNC 1
#define NPROBES_MAX 64
#define DP_TMP 20480   /* a directory's path is assembled backwards here, past every string */
#define DP_SIZE 8192
#define DP_DEPTH 64    /* components (and mount crossings) walked; deeper paths are not named */
#define AT_FDCWD_ -100

enum { K_GEN, K_OPEN, K_OPENAT2, K_CREAT, K_NET_REMOTE, K_NET_LOCAL, K_NET_SK, K_NET_ACCEPT, K_SENDMSG, K_CWD };
enum { R_FORK = 2, R_EXIT = 3, R_EXEC = 4, R_SYSCALL = 10, R_HEARTBEAT = 100, R_READY = 101 };

struct hdr {
	u32 len;
	u16 kind;
	u16 flags;
	u64 ts;
	u32 pid, tid, uid, aux;
	s64 ret;
	u64 cgroup;
};

struct scratch { u8 b[SCRATCH]; };
struct inflight { u32 probe; u32 pad; u64 a[6]; };
struct cfg { u32 self_pid; u32 loader_pid; s32 v1_subsys; u32 wake_bytes; u32 emit_clone; u32 pad; };
// Per probe: traced, failed calls dropped, open filter on, access modes any name passes (bit per
// flags & O_ACCMODE), and the lengths of the suffixes the rules compare the last component with.
struct pcfg { u8 on; u8 success_only; u8 gated; u8 any_access; u8 nsuf; u8 suf_len[16]; u8 pad[3]; };
// Open filter: (probe, kind 0 name / 1 suffix, length, bytes) -> access-mode bits it passes.
struct gkey { u16 probe; u16 kind; u32 len; u8 b[64]; };

struct { __uint(type, BPF_MAP_TYPE_RINGBUF); __uint(max_entries, 1 << 24); } rb SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1); __type(key, u32); __type(value, struct scratch); } scratch SEC(".maps");
// A thread's syscall in flight (its arguments, from enter to exit). A plain preallocated hash:
// an LRU's list upkeep cost the traced process more than the rest of the enter probe; entries of
// threads that exit inside a syscall are removed at their exit (proc_exit).
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 65536); __type(key, u32); __type(value, struct inflight); } inflight SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, u32); __type(value, struct cfg); } cfg SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, NPROBES_MAX); __type(key, u32); __type(value, struct pcfg); } pcfg SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_HASH); __uint(max_entries, 4096); __type(key, struct gkey); __type(value, u32); } gate SEC(".maps");
struct { __uint(type, BPF_MAP_TYPE_PERCPU_ARRAY); __uint(max_entries, 1); __type(key, u32); __type(value, u64); } lost SEC(".maps");

struct kernfs_node___old { struct kernfs_node *parent; } __attribute__((preserve_access_index));

static __always_inline struct cfg *get_cfg(void)
{
	u32 z = 0;
	return bpf_map_lookup_elem(&cfg, &z);
}

static __always_inline u8 *scratch_buf(void)
{
	u32 z = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &z);
	return s ? s->b : 0;
}

// An event that will never reach the reader: counted, and said as Falco's drop alert.
static __always_inline void count_lost(void)
{
	u32 z = 0;
	u64 *n = bpf_map_lookup_elem(&lost, &z);
	if (n)
		*n += 1;
}

// Wake the reader only when a lot is pending; otherwise it finds the data on its next poll.
static __always_inline void emit(u8 *b, u32 len, struct cfg *c)
{
	u64 pending = bpf_ringbuf_query(&rb, BPF_RB_AVAIL_DATA);
	u64 flags = pending + len >= c->wake_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
	((struct hdr *)b)->len = len;
	if (len < sizeof(struct hdr) || len >= SCRATCH || bpf_ringbuf_output(&rb, b, len & (SCRATCH - 1), flags))
		count_lost();
}

static __always_inline void put_len(u8 *b, u32 off, u16 l)
{
	b[IDX(off)] = l & 0xff;
	b[IDX(off + 1)] = l >> 8;
}

// A user string at off: (u16 length, bytes); returns the offset past it.
static __always_inline u32 put_ustr(u8 *b, u32 off, const void *p, u32 size, struct hdr *h)
{
	long n;
	u16 l = 0;
	off &= OFF_MASK;
	n = p ? bpf_probe_read_user_str(b + off + 2, size > STR_MAX ? STR_MAX : size, p) : 0;
	if (n > 0) {
		l = n - 1;
		if (n >= size)
			h->flags |= HDR_TRUNC;
	}
	put_len(b, off, l);
	return off + 2 + l;
}

static __always_inline u32 put_kstr(u8 *b, u32 off, const void *p, u32 size, struct hdr *h)
{
	long n;
	u16 l = 0;
	off &= OFF_MASK;
	n = p ? bpf_probe_read_kernel_str(b + off + 2, size > STR_MAX ? STR_MAX : size, p) : 0;
	if (n > 0) {
		l = n - 1;
		if (n >= size && size == STR_MAX)
			h->flags |= HDR_TRUNC;
	}
	put_len(b, off, l);
	return off + 2 + l;
}

static __always_inline void put_hdr(struct hdr *h, u16 kind, s64 ret)
{
	u64 pt = bpf_get_current_pid_tgid();
	h->kind = kind;
	h->flags = 0;
	h->ts = bpf_ktime_get_ns();
	h->pid = pt >> 32;
	h->tid = (u32)pt;
	h->uid = (u32)bpf_get_current_uid_gid();
	h->aux = 0;
	h->ret = ret;
	h->cgroup = bpf_get_current_cgroup_id();
}

static __always_inline struct file *fd_file(struct task_struct *t, long fd)
{
	struct file **arr = BPF_CORE_READ(t, files, fdt, fd);
	struct file *f = 0;
	if (fd < 0 || !arr || fd >= BPF_CORE_READ(t, files, fdt, max_fds))
		return 0;
	bpf_probe_read_kernel(&f, sizeof(f), arr + fd);
	return f;
}

static __always_inline struct kernfs_node *kn_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(kn->__parent))
		return BPF_CORE_READ(kn, __parent);
	return BPF_CORE_READ((struct kernfs_node___old *)kn, parent);
}


// One step up a directory's path (a bpf_loop callback, so the verifier walks it once): the
// component's name goes before those already written at DP_TMP + pos; at a mount's root the
// walk goes on from its mount point in the parent mount.
struct dp { struct dentry *d; struct vfsmount *vm; struct mount *mnt; struct dentry *root_d; struct vfsmount *root_m; u32 pos; u32 ok; };

static long dp_step(u64 i, void *arg)
{
	struct dp *s = arg;
	struct dentry *d = s->d, *parent, *mroot;
	struct vfsmount *vm = s->vm; /* locals: a CO-RE read of s->vm would relocate struct dp too */
	struct mount *mnt = s->mnt, *pm;
	u8 *b = scratch_buf();
	u32 len, pos = s->pos;
	if (!b || !d || !vm)
		return 1;
	if (d == s->root_d && vm == s->root_m) {
		s->ok = 1;
		return 1;
	}
	mroot = BPF_CORE_READ(vm, mnt_root);
	parent = BPF_CORE_READ(d, d_parent);
	if (d == mroot || d == parent) {
		pm = BPF_CORE_READ(mnt, mnt_parent);
		if (d != mroot || pm == mnt) { /* the top of the mount tree, or a disconnected dentry */
			s->ok = d == mroot;
			return 1;
		}
		s->d = BPF_CORE_READ(mnt, mnt_mountpoint);
		s->mnt = pm;
		s->vm = __builtin_preserve_access_index(&pm->mnt);
		return 0;
	}
	len = BPF_CORE_READ(d, d_name.len);
	if (len == 0 || len > 255 || pos < len + 1)
		return 1;
	pos -= len;
	bpf_probe_read_kernel(b + DP_TMP + (pos & (DP_SIZE - 1)), len & 255, BPF_CORE_READ(d, d_name.name));
	pos -= 1;
	b[DP_TMP + (pos & (DP_SIZE - 1))] = '/';
	s->pos = pos;
	s->d = parent;
	return 0;
}

// The path of (d, vm) as the task sees it, as the kernel's d_path does: names up to the task's
// root, crossing mount points. An empty string when it cannot be named whole (deeper than
// DP_DEPTH, longer than PATH_MAX, a dentry cut off from its tree); userspace then falls back to
// its own tables.
static __always_inline u32 put_dpath(u8 *b, u32 off, struct dentry *d, struct vfsmount *vm, struct task_struct *t)
{
	struct dp s = {
		.d = d, .vm = vm, .mnt = container_of(vm, struct mount, mnt), .root_d = BPF_CORE_READ(t, fs, root.dentry),
		.root_m = BPF_CORE_READ(t, fs, root.mnt), .pos = DP_SIZE, .ok = 0,
	};
	u32 n, sz;
	off &= OFF_MASK;
	bpf_loop(DP_DEPTH, dp_step, &s, 0);
	n = DP_SIZE - s.pos;
	if (!s.ok || n > 4095) {
		put_len(b, off, 0);
		return off + 2;
	}
	if (n == 0) {
		b[IDX(off + 2)] = '/';
		put_len(b, off, 1);
		return off + 3;
	}
	sz = n & 4095;
	barrier_var(sz);
	bpf_probe_read_kernel(b + off + 2, sz & 4095, b + DP_TMP + (s.pos & (DP_SIZE - 1)));
	put_len(b, off, sz);
	return off + 2 + (sz & 4095); /* bounded for the verifier (n is not, once past bpf_loop) */
}

// The directory a relative open starts from (the string at soff): dirfd's, or the cwd; empty for
// an absolute or empty path.
static __always_inline u32 put_base(u8 *b, u32 off, u32 soff, s32 dfd)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	u32 l = b[IDX(soff)] | ((u32)b[IDX(soff + 1)] << 8);
	struct file *f;
	if (l == 0 || b[IDX(soff + 2)] == '/') {
		put_len(b, off & OFF_MASK, 0);
		return (off & OFF_MASK) + 2;
	}
	if (dfd == AT_FDCWD_)
		return put_dpath(b, off, BPF_CORE_READ(t, fs, pwd.dentry), BPF_CORE_READ(t, fs, pwd.mnt), t);
	f = fd_file(t, dfd);
	if (!f) {
		put_len(b, off & OFF_MASK, 0);
		return (off & OFF_MASK) + 2;
	}
	return put_dpath(b, off, BPF_CORE_READ(f, f_path.dentry), BPF_CORE_READ(f, f_path.mnt), t);
}

// ---------------------------------------------------------------- syscall enter / exit

static __always_inline int sys_enter(u32 id, struct trace_event_raw_sys_enter *ctx)
{
	struct cfg *c = get_cfg();
	u64 pt = bpf_get_current_pid_tgid();
	u32 pid = pt >> 32, tid = (u32)pt;
	struct inflight in = {};
	if (!c || pid == c->self_pid || pid == c->loader_pid)
		return 0;
	in.probe = id;
	/* a helper read, not ctx loads: a context access past a shorter syscall's record (fewer
	 * arguments) makes the attach fail; words past its arguments are never decoded */
	bpf_probe_read_kernel(in.a, sizeof(in.a), ctx->args);
	/* A full table (threads parked inside traced calls, e.g. opens of FIFOs nobody writes)
	 * would make the call's exit find nothing: never silent, it is a lost event. */
	if (bpf_map_update_elem(&inflight, &tid, &in, BPF_ANY))
		count_lost();
	return 0;
}

struct netrec { s32 fd; u16 fam, proto, lport, rport; u8 lkind, rkind; u8 pad[2]; u8 lip[16], rip[16]; };

static __always_inline void net_from_sk(struct netrec *n, struct sock *sk)
{
	u16 fam = BPF_CORE_READ(sk, __sk_common.skc_family);
	n->fam = fam;
	if (fam == 2) {
		n->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
		n->rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
		n->lkind = n->rkind = 2;
		bpf_core_read(n->lip, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_core_read(n->rip, 4, &sk->__sk_common.skc_daddr);
	} else if (fam == 10) {
		n->lport = BPF_CORE_READ(sk, __sk_common.skc_num);
		n->rport = __builtin_bswap16(BPF_CORE_READ(sk, __sk_common.skc_dport));
		n->lkind = n->rkind = 10;
		bpf_core_read(n->lip, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(n->rip, 16, &sk->__sk_common.skc_v6_daddr);
	}
}

// fd family proto lport rport lip rip, as the bpftrace program's _net_body (a unix path is the
// record's one string; lkind/rkind: 0 empty, 2 IPv4, 10 IPv6, 1 the string).
static __always_inline u32 sys_net(u8 *b, u32 off, int kind, int sa_arg, struct inflight *in, s64 ret, struct hdr *h)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct netrec n = {};
	const void *path = 0;
	s32 fd = kind == K_NET_ACCEPT ? (s32)ret : (s32)in->a[0];
	struct file *f = fd_file(t, fd);
	struct socket *so = f ? BPF_CORE_READ(f, private_data) : 0;
	struct sock *sk = so ? BPF_CORE_READ(so, sk) : 0;
	n.fd = fd;
	if (sk)
		n.proto = BPF_CORE_READ(sk, sk_protocol);
	if (kind == K_NET_SK || kind == K_NET_ACCEPT) {
		if (fd >= 0 && sk)
			net_from_sk(&n, sk);
	} else {
		const u8 *sa = sa_arg >= 0 ? (const u8 *)in->a[sa_arg & 7] : 0;
		u16 ufam = 0;
		if (kind == K_SENDMSG) {
			void *name = 0;
			if (sa)
				bpf_probe_read_user(&name, sizeof(name), sa); /* msg_name is the first member */
			sa = name;
		}
		if (kind != K_NET_LOCAL && !sa) {
			if (fd >= 0 && sk)
				net_from_sk(&n, sk);
		} else {
			if (sa)
				bpf_probe_read_user(&ufam, sizeof(ufam), sa);
			n.fam = ufam;
			if (ufam == 2 || ufam == 10) {
				u16 port = 0;
				bpf_probe_read_user(&port, 2, sa + 2);
				port = __builtin_bswap16(port);
				if (kind == K_NET_LOCAL) {
					n.lport = port;
					n.lkind = ufam;
					n.rkind = 2; /* ntop(2, 0): 0.0.0.0 */
					bpf_probe_read_user(n.lip, ufam == 2 ? 4 : 16, sa + (ufam == 2 ? 4 : 8));
				} else {
					n.rport = port;
					n.lkind = n.rkind = ufam;
					bpf_probe_read_user(n.rip, ufam == 2 ? 4 : 16, sa + (ufam == 2 ? 4 : 8));
					if (sk) {
						n.lport = BPF_CORE_READ(sk, __sk_common.skc_num);
						if (ufam == 2)
							bpf_core_read(n.lip, 4, &sk->__sk_common.skc_rcv_saddr);
						else
							bpf_core_read(n.lip, 16, &sk->__sk_common.skc_v6_rcv_saddr);
					}
				}
			} else if (ufam == 1) {
				path = sa + 2;
				if (kind == K_NET_LOCAL)
					n.lkind = 1;
				else
					n.rkind = 1;
			}
		}
	}
	__builtin_memcpy(b + IDX(off), &n, sizeof(n));
	off += sizeof(n);
	return path ? put_ustr(b, off, path, 109, h) : (put_len(b, off, 0), off + 2);
}

// The open filter (see rules/kernelfilter.py): may a rule match this successful open? The path
// (the record's first string, at soff) is compared by its last component: empty paths, paths
// ending in '/', '.' or '..', and directories always pass.
static __always_inline int open_passes(u8 *b, u32 soff, u32 id, struct pcfg *pc, u64 flags, s64 ret)
{
	u32 acc = flags & 3, l, start = 0, clen, i, found = 0;
	struct gkey k = {};
	u32 *m;
	if ((pc->any_access >> acc) & 1)
		return 1;
	l = b[IDX(soff)] | ((u32)b[IDX(soff + 1)] << 8);
	soff += 2;
	if (l == 0 || b[IDX(soff + l - 1)] == '/')
		return 1;
	for (i = 1; i <= 65; i++) {
		if (i > l) {
			start = 0;
			found = 1;
			break;
		}
		if (b[IDX(soff + l - i)] == '/') {
			start = l - i + 1;
			found = 1;
			break;
		}
	}
	clen = found ? l - start : 1000;
	if ((clen == 1 && b[IDX(soff + start)] == '.') ||
	    (clen == 2 && b[IDX(soff + start)] == '.' && b[IDX(soff + start + 1)] == '.'))
		return 1;
	k.probe = id;
	if (clen <= 63) {
		u32 sz = clen & 63;
		barrier_var(sz);
		k.kind = 0;
		k.len = sz;
		bpf_probe_read_kernel(k.b, sz & 63, b + IDX(soff + start));
		m = bpf_map_lookup_elem(&gate, &k);
		if (m && ((*m >> acc) & 1))
			return 1;
	}
	for (i = 0; i < 16; i++) {
		u32 sl;
		if (i >= pc->nsuf)
			break;
		sl = pc->suf_len[i] & 63;
		if (sl == 0 || sl > clen)
			continue;
		barrier_var(sl);
		sl &= 63;
		__builtin_memset(k.b, 0, sizeof(k.b));
		k.kind = 1;
		k.len = sl;
		bpf_probe_read_kernel(k.b, sl, b + IDX(soff + l - sl));
		m = bpf_map_lookup_elem(&gate, &k);
		if (m && ((*m >> acc) & 1))
			return 1;
	}
	{ /* a directory: the process table keeps it for later relative opens and fchdir */
		struct file *f = fd_file((struct task_struct *)bpf_get_current_task(), ret);
		umode_t mode = f ? BPF_CORE_READ(f, f_inode, i_mode) : 0;
		if ((mode & 0xf000) == 0x4000)
			return 1;
	}
	return 0;
}

static __always_inline int sys_exit(u32 id, int kind, int s0, int s1, int s2, struct trace_event_raw_sys_exit *ctx)
{
	u64 pt = bpf_get_current_pid_tgid();
	u32 tid = (u32)pt, off, soff;
	s64 ret = ctx->ret;
	struct inflight *in = bpf_map_lookup_elem(&inflight, &tid);
	struct pcfg *pc;
	struct cfg *c;
	struct hdr *h;
	u64 flags = 0;
	u8 *b;
	if (!in)
		return 0;
	pc = bpf_map_lookup_elem(&pcfg, &id);
	c = get_cfg();
	b = scratch_buf();
	if (in->probe != id || !pc || !c || !b || !pc->on || (pc->success_only && ret < 0))
		goto out;
	h = (struct hdr *)b;
	put_hdr(h, R_SYSCALL + id, ret);
	__builtin_memcpy(b + sizeof(struct hdr), in->a, sizeof(in->a));
	off = sizeof(struct hdr) + 8 * 8;
	if (kind == K_OPENAT2) {
		u64 how[2] = {};
		bpf_probe_read_user(how, sizeof(how), (void *)in->a[2]);
		*(u64 *)(b + sizeof(struct hdr) + 48) = how[0];
		*(u64 *)(b + sizeof(struct hdr) + 56) = how[1];
		flags = how[0];
	} else if (kind == K_OPEN) {
		flags = in->a[s0 == 0 ? 1 : 2]; /* open(path, flags), openat(dfd, path, flags) */
	} else if (kind == K_CREAT) {
		flags = 577;
	}
	if (kind >= K_NET_REMOTE && kind <= K_SENDMSG) {
		off = sys_net(b, off, kind, s0, in, ret, h); /* s0: the sockaddr (msghdr) argument */
	} else {
		soff = off;
		if (s0 >= 0)
			off = put_ustr(b, off, (const void *)in->a[s0 & 7], STR_MAX, h);
		if (s1 >= 0)
			off = put_ustr(b, off, (const void *)in->a[s1 & 7], STR_MAX, h);
		if (s2 >= 0)
			off = put_ustr(b, off, (const void *)in->a[s2 & 7], STR_MAX, h);
		/* a cut path's last component is not the file's: it passes, as a long one did in bpftrace */
		if ((kind == K_OPEN || kind == K_OPENAT2 || kind == K_CREAT) && pc->gated && ret >= 0 &&
		    !(h->flags & HDR_TRUNC) && !open_passes(b, soff, id, pc, flags, ret))
			goto out;
		if (kind == K_OPEN || kind == K_OPENAT2 || kind == K_CREAT) /* open(path) and creat: from the cwd */
			off = put_base(b, off, soff, kind == K_CREAT || s0 == 0 ? AT_FDCWD_ : (s32)in->a[0]);
		else if (kind == K_CWD && ret == 0) {
			struct task_struct *t = (struct task_struct *)bpf_get_current_task();
			off = put_dpath(b, off, BPF_CORE_READ(t, fs, pwd.dentry), BPF_CORE_READ(t, fs, pwd.mnt), t);
		}
	}
	emit(b, off, c);
out:
	bpf_map_delete_elem(&inflight, &tid);
	return 0;
}

#define PROBE(id, name, kind, s0, s1, s2)                                               \
	SEC("tracepoint/syscalls/sys_enter_" #name)                                     \
	int enter_##name(struct trace_event_raw_sys_enter *ctx) { return sys_enter(id, ctx); } \
	SEC("tracepoint/syscalls/sys_exit_" #name)                                      \
	int exit_##name(struct trace_event_raw_sys_exit *ctx) { return sys_exit(id, kind, s0, s1, s2, ctx); }
#include "probes.h"

// ---------------------------------------------------------------- processes

static __always_inline int fork_exit(struct trace_event_raw_sys_exit *ctx)
{
	u64 pt = bpf_get_current_pid_tgid();
	struct cfg *c = get_cfg();
	struct hdr *h;
	u8 *b;
	if (!c)
		return 0;
	if (ctx->ret == 0 && (pt >> 32) == (u32)pt) { /* the child */
		struct task_struct *t = (struct task_struct *)bpf_get_current_task();
		if (!(b = scratch_buf()))
			return 0;
		h = (struct hdr *)b;
		put_hdr(h, R_FORK, 0);
		h->aux = BPF_CORE_READ(t, real_parent, tgid);
		emit(b, sizeof(*h), c);
	} else if (ctx->ret > 0 && c->emit_clone && (pt >> 32) != c->self_pid) { /* the parent, as Falco's clone exit */
		if (!(b = scratch_buf()))
			return 0;
		h = (struct hdr *)b;
		put_hdr(h, R_SYSCALL + NPROBES, ctx->ret);
		emit(b, sizeof(*h), c);
	}
	return 0;
}

SEC("tracepoint/syscalls/sys_exit_clone") int fork_clone(struct trace_event_raw_sys_exit *ctx) { return fork_exit(ctx); }
SEC("tracepoint/syscalls/sys_exit_clone3") int fork_clone3(struct trace_event_raw_sys_exit *ctx) { return fork_exit(ctx); }
SEC("tracepoint/syscalls/sys_exit_fork") int fork_fork(struct trace_event_raw_sys_exit *ctx) { return fork_exit(ctx); }
SEC("tracepoint/syscalls/sys_exit_vfork") int fork_vfork(struct trace_event_raw_sys_exit *ctx) { return fork_exit(ctx); }

SEC("tracepoint/sched/sched_process_exit")
int proc_exit(void *ctx)
{
	u64 pt = bpf_get_current_pid_tgid();
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct cfg *c = get_cfg();
	struct hdr *h;
	u32 tid = (u32)pt;
	u8 *b;
	bpf_map_delete_elem(&inflight, &tid); /* a thread that exits inside a traced syscall */
	if ((pt >> 32) != (u32)pt || !c || !(b = scratch_buf()))
		return 0;
	h = (struct hdr *)b;
	put_hdr(h, R_EXIT, 0);
	h->aux = (u32)(BPF_CORE_READ(t, exit_code) >> 8);
	emit(b, sizeof(*h), c);
	return 0;
}

struct exec_fixed { u32 ppid, loginuid; u64 tty, argv_len, cap_eff, cap_bset; u32 nlink, pad; u64 magic; };

// Exec: the facts the bpftrace program prints, then the strings filename, argument block (up to
// ARGV_MAX bytes, NUL-separated), comm, the default hierarchy's cgroup names (leaf, parent,
// grandparent), the v1 hierarchy's (leaf, parent), the exe's name and the cwd's name.
SEC("tracepoint/sched/sched_process_exec")
int proc_exec(struct trace_event_raw_sched_process_exec *ctx)
{
	struct task_struct *t = (struct task_struct *)bpf_get_current_task();
	struct cfg *c = get_cfg();
	struct exec_fixed x = {};
	struct mm_struct *mm;
	struct file *exe;
	struct tty_struct *tty;
	struct kernfs_node *kn, *p;
	struct hdr *h;
	u32 off, i;
	u64 as, ae, n;
	u8 *b;
	if (!c || !(b = scratch_buf()) || (bpf_get_current_pid_tgid() >> 32) == c->self_pid)
		return 0;
	h = (struct hdr *)b;
	put_hdr(h, R_EXEC, 0);
	h->uid = BPF_CORE_READ(t, cred, euid.val);
	mm = BPF_CORE_READ(t, mm);
	exe = BPF_CORE_READ(mm, exe_file);
	as = BPF_CORE_READ(mm, arg_start);
	ae = BPF_CORE_READ(mm, arg_end);
	x.ppid = BPF_CORE_READ(t, real_parent, tgid);
	x.loginuid = BPF_CORE_READ(t, loginuid.val);
	tty = BPF_CORE_READ(t, signal, tty);
	if (tty) {
		struct tty_driver *d = BPF_CORE_READ(tty, driver);
		u64 minor = (u64)(BPF_CORE_READ(d, minor_start) + BPF_CORE_READ(tty, index));
		x.tty = (minor & 0xff) | ((u64)BPF_CORE_READ(d, major) << 8) | ((minor & ~0xffULL) << 12);
	}
	x.argv_len = ae - as;
	x.cap_eff = BPF_CORE_READ(t, cred, cap_effective.val);
	x.cap_bset = BPF_CORE_READ(t, cred, cap_bset.val);
	x.nlink = BPF_CORE_READ(exe, f_inode, i_nlink);
	x.magic = BPF_CORE_READ(exe, f_inode, i_sb, s_magic);
	__builtin_memcpy(b + sizeof(struct hdr), &x, sizeof(x));
	off = sizeof(struct hdr) + sizeof(x);
	off = put_kstr(b, off, (const char *)ctx + (ctx->__data_loc_filename & 0xffff), STR_MAX, h);
	n = ae - as;
	if (n > ARGV_MAX)
		n = ARGV_MAX;
	off &= OFF_MASK;
	if (n > 0) /* an unreadable block reads as zeros, as the bpftrace program's pieces do */
		bpf_probe_read_user(b + off + 2, n & (ARGV_MAX * 2 - 1), (const void *)as);
	put_len(b, off, n);
	off += 2 + n;
	off &= OFF_MASK;
	bpf_get_current_comm(b + off + 2, 16);
	for (i = 0; i < 16 && b[IDX(off + 2 + i)]; i++)
		;
	put_len(b, off, i);
	off += 2 + i;
	kn = BPF_CORE_READ(t, cgroups, dfl_cgrp, kn);
	off = put_kstr(b, off, BPF_CORE_READ(kn, name), NAME_RD, h);
	p = kn ? kn_parent(kn) : 0;
	off = put_kstr(b, off, p ? BPF_CORE_READ(p, name) : 0, NAME_RD, h);
	p = p ? kn_parent(p) : 0;
	off = put_kstr(b, off, p ? BPF_CORE_READ(p, name) : 0, NAME_RD, h);
	kn = 0;
	if (c->v1_subsys >= 0 && c->v1_subsys < CGROUP_SUBSYS_COUNT) {
		struct cgroup_subsys_state *css = 0;
		struct css_set *cs = BPF_CORE_READ(t, cgroups);
		u32 idx = c->v1_subsys & 15;
		struct cgroup_subsys_state **arr = __builtin_preserve_access_index(&cs->subsys[0]);
		bpf_probe_read_kernel(&css, sizeof(css), arr + idx);
		kn = css ? BPF_CORE_READ(css, cgroup, kn) : 0;
	}
	off = put_kstr(b, off, kn ? BPF_CORE_READ(kn, name) : 0, NAME_RD, h);
	p = kn ? kn_parent(kn) : 0;
	off = put_kstr(b, off, p ? BPF_CORE_READ(p, name) : 0, NAME_RD, h);
	off = put_kstr(b, off, BPF_CORE_READ(exe, f_path.dentry, d_name.name), NAME_RD, h);
	off = put_kstr(b, off, BPF_CORE_READ(t, fs, pwd.dentry, d_name.name), NAME_RD, h);
	emit(b, off, c);
	return 0;
}

// ---------------------------------------------------------------- liveness

SEC("perf_event")
int heartbeat(void *ctx)
{
	struct cfg *c = get_cfg();
	u8 *b = scratch_buf();
	if (!c || !b)
		return 0;
	put_hdr((struct hdr *)b, R_HEARTBEAT, 0);
	emit(b, sizeof(struct hdr), c);
	return 0;
}

// Readiness: the source calls getpgid until this fires (every probe was attached before it).
SEC("tracepoint/syscalls/sys_enter_getpgid")
int ready(void *ctx)
{
	struct cfg *c = get_cfg();
	u8 *b;
	if (!c || (bpf_get_current_pid_tgid() >> 32) != c->self_pid || !(b = scratch_buf()))
		return 0;
	put_hdr((struct hdr *)b, R_READY, 0);
	((struct hdr *)b)->len = sizeof(struct hdr);
	bpf_ringbuf_output(&rb, b, sizeof(struct hdr), BPF_RB_FORCE_WAKEUP);
	return 0;
}

char LICENSE[] SEC("license") = "GPL"; /* probe_read helpers need a GPL-compatible program */
