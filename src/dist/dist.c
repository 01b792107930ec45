/* dist.c — see dist.h. One file for both builds: LG_HAVE_MPI selects MPI, otherwise the
 * functions are the size-1 stand-ins (collectives do nothing, a multi-rank launch is refused). */
#include "dist/dist.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <omp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef LG_HAVE_MPI
#include <mpi.h>
#endif

#include "core/util.h"
#include "ops/ops.h"

static int g_rank = 0, g_size = 1;
static int g_mpi;            /* MPI_Init done by us (and not yet finalised) */
static uint64_t g_bytes;     /* all-reduce payload so far */
static double g_secs;        /* time in collectives so far */
static int g_errfd = 2;      /* where rank > 0 still reports errors when its stderr is quiet */
#ifdef LG_HAVE_MPI
static unsigned g_timeout;   /* LORAGA_MPI_TIMEOUT seconds, 0: none */
#endif

static long env_long(const char *name) {
    const char *s = getenv(name);
    return s && *s ? strtol(s, NULL, 10) : -1;
}

#ifdef LG_HAVE_MPI
/* Started by an MPI launcher: the variables OpenMPI's mpirun, PMI (MPICH, Slurm) and PMIx set. */
static int launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMI_RANK") || getenv("PMIX_RANK");
}
#endif

int lg_dist_have_mpi(void) {
#ifdef LG_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

const char *lg_dist_info(void) {
#ifdef LG_HAVE_MPI
    static char buf[MPI_MAX_LIBRARY_VERSION_STRING + 8];
    if (!buf[0]) {
        char v[MPI_MAX_LIBRARY_VERSION_STRING];
        int len = 0;
        MPI_Get_library_version(v, &len);
        v[strcspn(v, ",\n")] = 0; /* "Open MPI v4.1.4, package: ..." -> the first part */
        snprintf(buf, sizeof buf, "MPI (%s)", v);
    }
    return buf;
#else
    return "built without MPI";
#endif
}

int lg_dist_rank(void) { return g_rank; }
int lg_dist_size(void) { return g_size; }
uint64_t lg_dist_bytes_reduced(void) { return g_bytes; }
double lg_dist_seconds(void) { return g_secs; }

static void say(const char *msg) {
    char line[1200];
    int n = g_size > 1 ? snprintf(line, sizeof line, "loraga: rank %d of %d: %s\n", g_rank, g_size, msg)
                       : snprintf(line, sizeof line, "loraga: %s\n", msg);
    if (n > (int)sizeof line - 1) n = (int)sizeof line - 1;
    if (write(g_errfd, line, (size_t)n) < 0) { /* nowhere left to report to */
    }
}

static char g_scratch[4096]; /* lg_dist_scratch_dir's directory, removed on abort */

_Noreturn void lg_dist_abort(const char *msg) {
    char buf[1100];
    snprintf(buf, sizeof buf, "%s; stopping all ranks", msg);
    say(buf);
    if (g_scratch[0]) { /* the normal exit path that would remove it is not taken */
        DIR *d = opendir(g_scratch);
        struct dirent *e;
        char path[4400];
        while (d && (e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
                snprintf(path, sizeof path, "%s/%s", g_scratch, e->d_name);
                unlink(path);
            }
        if (d) closedir(d);
        rmdir(g_scratch);
    }
#ifdef LG_HAVE_MPI
    if (g_mpi) MPI_Abort(MPI_COMM_WORLD, 1);
#endif
    exit(1);
}

#ifdef LG_HAVE_MPI
/* The watchdog: a rank that waits longer than g_timeout in one collective leaves; mpirun then
 * sees a rank exit without MPI_Finalize and ends the others. write + _exit: signal-safe. */
static void on_alarm(int sig) {
    (void)sig;
    static const char m[] = "loraga: an MPI collective waited longer than LORAGA_MPI_TIMEOUT; a rank is stuck; "
                            "stopping\n";
    if (write(g_errfd, m, sizeof m - 1) < 0) {
    }
    _exit(1);
}
static double g_t0;
static void arm(void) {
    g_t0 = lg_now();
    if (g_timeout) alarm(g_timeout);
}
static void disarm(void) {
    if (g_timeout) alarm(0);
    g_secs += lg_now() - g_t0;
}

static void check(int rc, const char *what) {
    disarm();
    if (rc == MPI_SUCCESS) return;
    char es[MPI_MAX_ERROR_STRING], msg[MPI_MAX_ERROR_STRING + 64];
    int len = 0;
    MPI_Error_string(rc, es, &len);
    snprintf(msg, sizeof msg, "%s failed: %s", what, es);
    lg_dist_abort(msg);
}

/* Without OMP_NUM_THREADS, every rank on a node would start one thread per core: split the
 * cores among the node's ranks when the launcher did not bind them (a bound rank's OpenMP
 * already sizes itself to its affinity mask). */
static void split_threads(void) {
    long local = env_long("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (local <= 1 || getenv("OMP_NUM_THREADS")) return;
    cpu_set_t set;
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    if (sched_getaffinity(0, sizeof set, &set) != 0 || CPU_COUNT(&set) < online) return;
    int th = (int)LG_MAX(1, online / local);
    lg_set_threads(th);
}
#endif

int lg_dist_init(int *argc, char ***argv) {
    (void)argc, (void)argv;
    if (g_size > 1 || g_mpi) return 0;
#ifdef LG_HAVE_MPI
    if (!launched()) return 0; /* a plain run: one process, MPI never started */
    int provided, rc = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    if (rc != MPI_SUCCESS) return lg_errorf("MPI_Init failed (code %d)", rc);
    g_mpi = 1;
    /* errors come back as codes (check() turns them into a clean abort with a message) */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    long t = env_long("LORAGA_MPI_TIMEOUT");
    if (t > 0 && g_size > 1) {
        g_timeout = (unsigned)t;
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_alarm;
        sigaction(SIGALRM, &sa, NULL);
    }
    split_threads();
    return 0;
#else
    /* one of several ranks: each would train alone and all would write the same RUNDIR */
    long want = LG_MAX(env_long("OMPI_COMM_WORLD_SIZE"), env_long("PMI_SIZE"));
    long rank = LG_MAX(LG_MAX(env_long("OMPI_COMM_WORLD_RANK"), env_long("PMI_RANK")), env_long("PMIX_RANK"));
    if (want > 1 || rank > 0)
        return lg_errorf("this loraga was built without MPI, so it cannot run as one of %s%ld ranks; install "
                         "libopenmpi-dev openmpi-bin and rebuild (make), or run a single process",
                         want > 1 ? "" : "at least ", want > 1 ? want : rank + 1);
    return 0;
#endif
}

void lg_dist_finalize(void) {
#ifdef LG_HAVE_MPI
    if (g_mpi) MPI_Finalize();
#endif
    g_mpi = 0;
    g_rank = 0, g_size = 1;
}

void lg_dist_quiet_others(void) {
    if (g_rank == 0 || g_errfd != 2 || env_long("LORAGA_MPI_VERBOSE") > 0) return;
    int keep = dup(2), null = open("/dev/null", O_WRONLY);
    if (keep < 0 || null < 0 || dup2(null, 2) < 0) {
        if (keep >= 0) close(keep);
    } else {
        g_errfd = keep;
    }
    if (null >= 0) close(null);
}

/* MPI counts are ints: larger buffers go in pieces. */
#define CHUNK ((size_t)1 << 30)

void lg_dist_allreduce_sum(float *x, size_t n) {
    if (g_size <= 1) return;
    g_bytes += n * sizeof *x;
#ifdef LG_HAVE_MPI
    for (size_t i = 0; i < n; i += CHUNK) {
        arm();
        check(MPI_Allreduce(MPI_IN_PLACE, x + i, (int)LG_MIN(CHUNK, n - i), MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
    }
#else
    (void)x;
#endif
}

void lg_dist_allreduce_sum_f64(double *x, size_t n) {
    if (g_size <= 1) return;
    g_bytes += n * sizeof *x;
#ifdef LG_HAVE_MPI
    for (size_t i = 0; i < n; i += CHUNK) {
        arm();
        check(MPI_Allreduce(MPI_IN_PLACE, x + i, (int)LG_MIN(CHUNK, n - i), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce");
    }
#else
    (void)x;
#endif
}

void lg_dist_bcast(void *buf, size_t bytes, int root) {
    if (g_size <= 1) return;
#ifdef LG_HAVE_MPI
    for (size_t i = 0; i < bytes; i += CHUNK) {
        arm();
        check(MPI_Bcast((char *)buf + i, (int)LG_MIN(CHUNK, bytes - i), MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
#else
    (void)buf, (void)root;
#endif
}

void lg_dist_barrier(void) {
    if (g_size <= 1) return;
#ifdef LG_HAVE_MPI
    arm();
    check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
#endif
}

/* ---- data parallelism helpers ------------------------------------------------------------- */

void lg_dist_rows(int B, int *first, int *count) {
    int q = B / g_size, extra = B % g_size;
    if (first) *first = g_rank * q + LG_MIN(g_rank, extra);
    if (count) *count = q + (g_rank < extra);
}

double lg_dist_shard(const lg_batch *g, lg_batch *local) {
    double w = 0;
    for (long i = 0; i < (long)g->B * g->T; i++) w += g->weight[i];
    if (g_size <= 1) {
        *local = *g;
        return w;
    }
    int first, count;
    lg_dist_rows(g->B, &first, &count);
    size_t off = (size_t)first * g->T;
    *local = (lg_batch){count, g->T, g->inputs + off, g->targets + off, g->weight + off};
    return w;
}

void lg_dist_allreduce_grads(lg_opt_tensor *t, int n) {
    if (g_size <= 1) return;
    /* LoRA has hundreds of small tensors: pack them so that the call count (latency) stays low;
     * tensors bigger than the buffer (full fine-tuning) are reduced in place */
    enum { PACK = 1 << 22 }; /* floats: 16 MiB */
    float *buf = NULL;
    size_t used = 0;
    int from = 0; /* the first tensor in buf */
    for (int i = 0; i <= n; i++) {
        int flush = i == n || (used && used + (size_t)t[i].n > PACK);
        if (flush && used) {
            lg_dist_allreduce_sum(buf, used);
            for (size_t o = 0; from < i; from++) {
                memcpy(t[from].grad, buf + o, (size_t)t[from].n * sizeof(float));
                o += (size_t)t[from].n;
            }
            used = 0;
        }
        if (i == n) break;
        if ((size_t)t[i].n > PACK) {
            lg_dist_allreduce_sum(t[i].grad, (size_t)t[i].n);
            from = i + 1;
            continue;
        }
        if (!buf) buf = lg_malloc((size_t)PACK * sizeof(float));
        if (!used) from = i;
        memcpy(buf + used, t[i].grad, (size_t)t[i].n * sizeof(float));
        used += (size_t)t[i].n;
    }
    free(buf);
}

int lg_dist_check_same(const lg_opt_tensor *t, int n) {
    if (g_size <= 1) return 0;
    uint64_t h = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < n; i++) {
        const uint32_t *w = (const uint32_t *)t[i].data;
        for (int64_t j = 0; j < t[i].n; j++) {
            h ^= w[j];
            h *= 0xff51afd7ed558ccdull;
            h ^= h >> 29;
        }
    }
    uint64_t h0 = h;
    lg_dist_bcast(&h0, sizeof h0, 0);
    double differ = h0 != h;
    lg_dist_allreduce_sum_f64(&differ, 1);
    if (differ > 0)
        return lg_errorf("the trained parameters differ between ranks on %.0f of %d ranks (the ranks' arithmetic "
                         "is not identical: mixed CPUs, libraries or thread counts?)", differ, g_size);
    return 0;
}

char *lg_dist_scratch_dir(void) {
    const char *base = getenv("TMPDIR");
    char tmpl[4096];
    snprintf(tmpl, sizeof tmpl, "%s/loraga-rank%d-XXXXXX", base && *base ? base : "/tmp", g_rank);
    if (!mkdtemp(tmpl)) {
        lg_errorf("%s: cannot create a scratch directory: %s", tmpl, strerror(errno));
        return NULL;
    }
    snprintf(g_scratch, sizeof g_scratch, "%s", tmpl);
    return lg_strdup(tmpl);
}
