// SPDX-License-Identifier: Apache-2.0
// The ring-buffer event source's loader (run by webhook/runtime/sources/ringbuf.py as a child,
// as bpftrace is): loads portcullis.bpf.o, fills its maps and attaches the programs the config
// on stdin names, then copies ring-buffer records to stdout in large writes until SIGINT/SIGTERM.
//
// Config (stdin, one directive a line, then "go"):
//   ring BYTES            ring buffer size (a power of two pages)
//   poll MS               reader poll timeout (the kernel side wakes us only when much is pending)
//   prog NAME             load and attach this program (others are not loaded)
//   heartbeat NAME NS     load NAME and attach it to a CPU-clock timer on CPU 0 every NS ns
//   map NAME KEYHEX VALHEX  a map entry, set after load
// Output: the records as the kernel wrote them (each starts with its u32 length), plus a
// record of kind 102 (u64 total lost) each second while the kernel counted losses.
#include <errno.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#define OUT_CAP (4 << 20)
#define MAX_LINE 1024
#define R_LOST 102

static volatile sig_atomic_t stop;
static unsigned char *out;
static size_t out_len;

static void on_signal(int sig) { (void)sig; stop = 1; }

static int flush_out(void)
{
	size_t done = 0;
	while (done < out_len) {
		ssize_t n = write(1, out + done, out_len - done);
		if (n < 0) {
			if (errno == EINTR && !stop)
				continue;
			return -1;
		}
		done += (size_t)n;
	}
	out_len = 0;
	return 0;
}

static int on_record(void *ctx, void *data, size_t size)
{
	(void)ctx;
	if (size < 8 || *(uint32_t *)data != size) /* framing is the record's own length */
		return 0;
	if (out_len + size > OUT_CAP && flush_out() < 0)
		return -1;
	memcpy(out + out_len, data, size);
	out_len += size;
	return 0;
}

static int unhex(const char *s, unsigned char *buf, size_t cap, size_t *len)
{
	size_t n = strlen(s);
	if (n % 2 || n / 2 > cap)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		buf[i] = (unsigned char)v;
	}
	*len = n / 2;
	return 0;
}

struct entry { char map[64]; unsigned char key[256], val[256]; size_t klen, vlen; };

static void lost_record(uint64_t total)
{
	unsigned char rec[16] = {0};
	uint32_t len = sizeof(rec);
	uint16_t kind = R_LOST;
	memcpy(rec, &len, 4);
	memcpy(rec + 4, &kind, 2);
	memcpy(rec + 8, &total, 8);
	on_record(NULL, rec, sizeof(rec));
}

int main(int argc, char **argv)
{
	char line[MAX_LINE], *progs[256], hb_name[64] = "";
	unsigned long long hb_ns = 0, ring = 0, inflight = 0;
	int nprogs = 0, nentries = 0, poll_ms = 5, ncpu, err;
	struct entry *entries = calloc(4096, sizeof(struct entry));
	struct bpf_object *obj;
	struct bpf_program *prog;
	struct ring_buffer *rb;
	uint64_t lost_seen = 0;
	time_t last_lost = 0;

	struct sigaction sa = {0};
	sa.sa_handler = on_signal; /* no SA_RESTART: a write blocked on a full pipe returns on a stop */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	if (argc != 2 || !entries) {
		fprintf(stderr, "usage: %s PROGRAM.bpf.o < config\n", argv[0]);
		return 2;
	}
	while (fgets(line, sizeof(line), stdin)) {
		char a[MAX_LINE], b[MAX_LINE], c[MAX_LINE];
		line[strcspn(line, "\n")] = 0;
		if (!strcmp(line, "go"))
			break;
		if (sscanf(line, "ring %llu", &ring) == 1 || sscanf(line, "poll %d", &poll_ms) == 1 ||
		    sscanf(line, "inflight %llu", &inflight) == 1)
			continue;
		if (sscanf(line, "prog %63s", a) == 1 && nprogs < 256) {
			progs[nprogs++] = strdup(a);
			continue;
		}
		if (sscanf(line, "heartbeat %63s %llu", hb_name, &hb_ns) == 2)
			continue;
		if (sscanf(line, "map %63s %511s %511s", a, b, c) == 3 && nentries < 4096) {
			struct entry *e = &entries[nentries++];
			if (strlen(a) >= sizeof(e->map) || unhex(b, e->key, sizeof(e->key), &e->klen) || unhex(c, e->val, sizeof(e->val), &e->vlen)) {
				fprintf(stderr, "bad map entry in config: %s\n", line);
				return 2;
			}
			memcpy(e->map, a, strlen(a) + 1);
			continue;
		}
		fprintf(stderr, "bad config line: %s\n", line);
		return 2;
	}
	libbpf_set_strict_mode(LIBBPF_STRICT_ALL);
	obj = bpf_object__open_file(argv[1], NULL);
	if (!obj) {
		fprintf(stderr, "cannot open %s: %s\n", argv[1], strerror(errno));
		return 1;
	}
	bpf_object__for_each_program(prog, obj) {
		int want = !strcmp(bpf_program__name(prog), hb_name);
		for (int i = 0; i < nprogs && !want; i++)
			want = !strcmp(bpf_program__name(prog), progs[i]);
		bpf_program__set_autoload(prog, want);
	}
	if (ring && bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "rb"), (unsigned)ring)) {
		fprintf(stderr, "bad ring size %llu\n", ring);
		return 1;
	}
	if (inflight && (inflight > 1u << 22 ||
			 bpf_map__set_max_entries(bpf_object__find_map_by_name(obj, "inflight"), (unsigned)inflight))) {
		fprintf(stderr, "bad in-flight table size %llu\n", inflight);
		return 1;
	}
	if ((err = bpf_object__load(obj))) {
		fprintf(stderr, "loading the BPF program failed: %s\n", strerror(-err));
		return 1;
	}
	for (int i = 0; i < nentries; i++) {
		struct bpf_map *m = bpf_object__find_map_by_name(obj, entries[i].map);
		if (!m || bpf_map__update_elem(m, entries[i].key, entries[i].klen, entries[i].val, entries[i].vlen, BPF_ANY)) {
			fprintf(stderr, "cannot set an entry of map %s: %s\n", entries[i].map, strerror(errno));
			return 1;
		}
	}
	for (int i = 0; i < nprogs; i++) {
		struct bpf_program *p = bpf_object__find_program_by_name(obj, progs[i]);
		if (!p || !bpf_program__attach(p)) {
			fprintf(stderr, "cannot attach %s: %s\n", progs[i], strerror(errno));
			return 1;
		}
	}
	if (hb_name[0]) {
		struct perf_event_attr attr = {0};
		struct bpf_program *p = bpf_object__find_program_by_name(obj, hb_name);
		int fd;
		attr.type = PERF_TYPE_SOFTWARE;
		attr.config = PERF_COUNT_SW_CPU_CLOCK;
		attr.size = sizeof(attr);
		attr.sample_period = hb_ns;
		fd = (int)syscall(SYS_perf_event_open, &attr, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
		if (!p || fd < 0 || !bpf_program__attach_perf_event(p, fd)) {
			fprintf(stderr, "cannot attach the heartbeat timer: %s\n", strerror(errno));
			return 1;
		}
	}
	out = malloc(OUT_CAP);
	rb = ring_buffer__new(bpf_map__fd(bpf_object__find_map_by_name(obj, "rb")), on_record, NULL, NULL);
	if (!out || !rb) {
		fprintf(stderr, "cannot open the ring buffer: %s\n", strerror(errno));
		return 1;
	}
	ncpu = libbpf_num_possible_cpus();
	while (!stop) {
		/* poll only consumes a ring the kernel woke: records written with BPF_RB_NO_WAKEUP are
		 * taken by the consume after the timeout */
		err = ring_buffer__poll(rb, poll_ms);
		if (err >= 0 || err == -EINTR)
			err = ring_buffer__consume(rb);
		if (err < 0 && err != -EINTR) {
			fprintf(stderr, "ring buffer poll failed: %s\n", strerror(-err));
			return 1;
		}
		if (time(NULL) != last_lost && ncpu > 0) {
			uint64_t vals[ncpu], total = 0;
			uint32_t zero = 0;
			last_lost = time(NULL);
			if (!bpf_map__lookup_elem(bpf_object__find_map_by_name(obj, "lost"), &zero, 4, vals,
						  sizeof(uint64_t) * (size_t)ncpu, 0)) {
				for (int i = 0; i < ncpu; i++)
					total += vals[i];
				if (total != lost_seen) {
					lost_seen = total;
					lost_record(total);
				}
			}
		}
		if (out_len && flush_out() < 0)
			return 0; /* the reader went away */
	}
	ring_buffer__consume(rb); /* what the kernel wrote before we were asked to stop */
	flush_out();
	ring_buffer__free(rb);
	bpf_object__close(obj);
	return 0;
}
