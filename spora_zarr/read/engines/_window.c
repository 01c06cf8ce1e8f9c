/* The inner loop of spora_zarr.read.engines.direct: one window of a sharded (or unsharded) zarr v3 array of
 * blosc-compressed or uncompressed little-endian chunks.
 *
 * spora_window_read() copies the window [start, stop) of a C-order array into `out` (C order, the
 * window's shape). The caller opens the shard files the window touches and passes their
 * descriptors and chunk tables ((offset, size) per inner chunk, C order, as in the zarr sharding
 * index); this code lists the chunks, and up to `nthreads` threads (the caller's and helpers kept
 * for the process) take them one at a time: a pread of the chunk's bytes, one c-blosc decode (the
 * functions of the blosc library the caller loaded, passed as pointers) into a per-thread buffer,
 * and a copy of the overlap into `out`. Chunks never written are filled with the fill value.
 *
 * It checks its own contract before it touches memory: the window inside the array shape, every
 * copy inside the output buffer (out_bytes), every shard number below the number of files passed
 * (nfiles), every chunk-table slot below the table length (table_slots) and the scratch buffer big
 * enough; a violation is SPORA_ERR_CONTRACT, never a write out of bounds. spora_window_size() gives
 * the size of the struct, which the caller compares with its own copy of the layout.
 *
 * A plain shared library, called through ctypes (which releases the GIL). A forked child (another
 * pid) starts helpers of its own; nothing the parent held is used there.
 */

#define _GNU_SOURCE /* pread, pthread_setname_np */

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define SPORA_MAX_AXES 8
#define SPORA_MAX_HELPERS 63
#define SPORA_MISSING UINT64_MAX

typedef int (*spora_validate_fn)(const void *src, size_t cbytes, size_t *nbytes);
typedef int (*spora_decompress_fn)(const void *src, void *dest, size_t destsize, int numinternalthreads);

/* Error codes: error_code of a failed read, with the chunk it concerns. */
enum {
    SPORA_OK = 0,
    SPORA_ERR_READ = 1,   /* pread failed; error_detail = errno */
    SPORA_ERR_SHORT = 2,  /* the file ends inside the chunk; error_detail = bytes read */
    SPORA_ERR_DECODE = 3, /* not a valid blosc buffer, or blosc failed; error_detail = its result */
    SPORA_ERR_SIZE = 4,   /* decoded (or stored) size is not the chunk's; error_detail = that size */
    SPORA_ERR_CONTRACT = 5, /* the caller broke the contract; error_detail = one of SPORA_BAD_*, error_offset = the axis or value */
};

/* What a SPORA_ERR_CONTRACT read found wrong. */
enum {
    SPORA_BAD_ARRAY = 1,   /* axes, item size, chunk or shard shape, threads, pointers; error_offset = axis or -1 */
    SPORA_BAD_WINDOW = 2,  /* start/stop not inside the array shape; error_offset = axis */
    SPORA_BAD_OUTPUT = 3,  /* a copy would leave the output buffer; error_offset = axis or -1 */
    SPORA_BAD_SHARD = 4,   /* a shard number outside the files passed; error_offset = the number */
    SPORA_BAD_SLOT = 5,    /* a chunk-table slot outside the table; error_offset = the slot */
    SPORA_BAD_SCRATCH = 6, /* the scratch buffer cannot hold nthreads blocks of a chunk */
};

/* One read. The layout mirrors spora_zarr.read.engines.direct._Window (ctypes): int64 fields and pointers. */
typedef struct {
    /* the array */
    int64_t ndim;
    int64_t shape[SPORA_MAX_AXES];     /* array shape */
    int64_t chunk[SPORA_MAX_AXES];     /* inner chunk shape */
    int64_t per_shard[SPORA_MAX_AXES]; /* inner chunks per shard along each axis (1: unsharded) */
    int64_t itemsize;
    int64_t compressed;                /* 1: blosc chunks, 0: raw bytes */
    spora_validate_fn validate;
    spora_decompress_fn decompress;
    const char *fill;                  /* itemsize bytes */
    /* the window */
    int64_t start[SPORA_MAX_AXES];
    int64_t stop[SPORA_MAX_AXES];
    char *out;                         /* element `start` of the window */
    int64_t out_bytes;                 /* bytes of the output buffer from `out` on */
    int64_t out_stride[SPORA_MAX_AXES]; /* bytes between neighbours along each axis of `out` */
    /* the shards it touches: a box of shard coordinates, listed in C order */
    int64_t shard_lo[SPORA_MAX_AXES];
    int64_t shard_count[SPORA_MAX_AXES];
    int64_t nfiles;                    /* entries of fds and tables */
    int64_t table_slots;               /* (offset, size) pairs in each table */
    const int64_t *fds;                /* per shard; -1: no file (every chunk fill) */
    const uint64_t *const *tables;     /* per shard: (offset, size) per chunk, checked against the file by the caller */
    /* per-thread scratch: nthreads blocks of scratch_stride bytes (chunk bytes + max stored bytes) */
    char *scratch;
    int64_t scratch_bytes;
    int64_t scratch_stride;
    int64_t nthreads;
    int64_t parallel_min_bytes;        /* windows that decode fewer bytes are read by the caller alone */
    /* the result */
    int64_t error_code;
    int64_t error_shard;               /* index into fds / tables; -1: none */
    int64_t error_offset;
    int64_t error_nbytes;
    int64_t error_detail;
    /* work sharing, set here */
    int64_t chunk_lo[SPORA_MAX_AXES];
    int64_t chunk_n[SPORA_MAX_AXES];
    int64_t chunk_bytes;
    int64_t njobs;
    int64_t next;
    pthread_mutex_t *lock;
} spora_window;

static void fail(spora_window *w, int64_t code, int64_t shard, uint64_t offset, uint64_t nbytes, int64_t detail) {
    pthread_mutex_lock(w->lock);
    if (w->error_code == SPORA_OK) {
        w->error_shard = shard;
        w->error_offset = (int64_t)offset;
        w->error_nbytes = (int64_t)nbytes;
        w->error_detail = detail;
        __atomic_store_n(&w->error_code, code, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(w->lock);
}

/* Fill `nbytes` bytes at dst (a multiple of the item size) with the fill value. */
static void fill_run(const spora_window *w, char *dst, int64_t nbytes) {
    memcpy(dst, w->fill, (size_t)w->itemsize);
    for (int64_t done = w->itemsize; done < nbytes; done *= 2)
        memcpy(dst + done, dst, (size_t)(done < nbytes - done ? done : nbytes - done));
}

/* Copy the box [lo, hi) (array coordinates) from a decoded chunk whose first element is at
 * `origin` into the window; chunk NULL fills the box. One memcpy per run along the last axis,
 * which is contiguous in `out` (out_stride[last] == itemsize). Returns -1 (SPORA_BAD_OUTPUT) and
 * copies nothing if the box does not lie inside the output buffer. */
static int copy_box(spora_window *w, int64_t shard, const char *chunk, const int64_t *origin, const int64_t *lo, const int64_t *hi) {
    const int64_t nd = w->ndim, last = nd - 1;
    int64_t cstride[SPORA_MAX_AXES], count[SPORA_MAX_AXES] = {0}, at[SPORA_MAX_AXES] = {0};
    const int64_t *ostride = w->out_stride;
    cstride[last] = w->itemsize;
    for (int64_t a = last - 1; a >= 0; a--) cstride[a] = cstride[a + 1] * w->chunk[a + 1];
    int64_t src = 0, dst = 0, runs = 1, end = 0;
    for (int64_t a = 0; a < nd; a++) {
        src += (lo[a] - origin[a]) * cstride[a];
        dst += (lo[a] - w->start[a]) * ostride[a];
        count[a] = hi[a] - lo[a];
        end += (count[a] - 1) * ostride[a];
        if (a < last) runs *= count[a];
    }
    const int64_t run = count[last] * w->itemsize;
    end += dst + w->itemsize; /* one past the last byte of the box in `out` */
    if (dst < 0 || run < 1 || end > w->out_bytes) {
        fail(w, SPORA_ERR_CONTRACT, shard, UINT64_MAX, 0, SPORA_BAD_OUTPUT); /* error_offset -1: no axis */
        return -1;
    }
    const char *fill_row = NULL;
    if (!chunk) {
        fill_run(w, w->out + dst, run);
        fill_row = w->out + dst;
    }
    for (int64_t r = 0; r < runs; r++) {
        char *to = w->out + dst;
        if (chunk) memcpy(to, chunk + src, (size_t)run);
        else if (to != fill_row) memcpy(to, fill_row, (size_t)run);
        for (int64_t a = last - 1; a >= 0; a--) { /* next run: odometer over the leading axes */
            src += cstride[a];
            dst += ostride[a];
            if (++at[a] < count[a]) break;
            src -= count[a] * cstride[a];
            dst -= count[a] * ostride[a];
            at[a] = 0;
        }
    }
    return 0;
}

static int read_bytes(spora_window *w, int64_t shard, int fd, char *into, uint64_t offset, uint64_t nbytes) {
    uint64_t got = 0;
    while (got < nbytes) {
        ssize_t n = pread(fd, into + got, (size_t)(nbytes - got), (off_t)(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            fail(w, SPORA_ERR_READ, shard, offset, nbytes, errno);
            return -1;
        }
        if (n == 0) {
            fail(w, SPORA_ERR_SHORT, shard, offset, nbytes, (int64_t)got);
            return -1;
        }
        got += (uint64_t)n;
    }
    return 0;
}

/* Chunk number `job` of the window (C order over the chunks it touches). */
static void do_job(spora_window *w, int64_t job, char *scratch) {
    const int64_t nd = w->ndim;
    int64_t k[SPORA_MAX_AXES], origin[SPORA_MAX_AXES], lo[SPORA_MAX_AXES], hi[SPORA_MAX_AXES];
    int64_t rest = job, shard = 0, slot = 0;
    for (int64_t a = nd - 1; a >= 0; a--) {
        k[a] = w->chunk_lo[a] + rest % w->chunk_n[a];
        rest /= w->chunk_n[a];
    }
    for (int64_t a = 0; a < nd; a++) {
        const int64_t along = k[a] / w->per_shard[a] - w->shard_lo[a]; /* the shard's place in the box along axis a */
        if (along < 0 || along >= w->shard_count[a]) {
            fail(w, SPORA_ERR_CONTRACT, -1, (uint64_t)along, 0, SPORA_BAD_SHARD);
            return;
        }
        origin[a] = k[a] * w->chunk[a];
        lo[a] = origin[a] > w->start[a] ? origin[a] : w->start[a];
        hi[a] = origin[a] + w->chunk[a] < w->stop[a] ? origin[a] + w->chunk[a] : w->stop[a];
        shard = shard * w->shard_count[a] + along;
        slot = slot * w->per_shard[a] + k[a] % w->per_shard[a];
    }
    if (shard >= w->nfiles) {
        fail(w, SPORA_ERR_CONTRACT, -1, (uint64_t)shard, 0, SPORA_BAD_SHARD);
        return;
    }
    const int64_t fd = w->fds[shard];
    if (fd >= 0 && slot >= w->table_slots) {
        fail(w, SPORA_ERR_CONTRACT, shard, (uint64_t)slot, 0, SPORA_BAD_SLOT);
        return;
    }
    const uint64_t offset = fd < 0 ? SPORA_MISSING : w->tables[shard][2 * slot];
    const uint64_t nbytes = fd < 0 ? 0 : w->tables[shard][2 * slot + 1];
    if (offset == SPORA_MISSING) {
        copy_box(w, shard, NULL, origin, lo, hi);
        return;
    }
    if (nbytes > (uint64_t)(w->scratch_stride - w->chunk_bytes)) { /* more than blosc ever stores */
        fail(w, w->compressed ? SPORA_ERR_DECODE : SPORA_ERR_SIZE, shard, offset, nbytes, (int64_t)nbytes);
        return;
    }
    char *decoded = scratch, *stored = scratch + w->chunk_bytes;
    if (read_bytes(w, shard, (int)fd, stored, offset, nbytes) != 0) return;
    if (w->compressed) {
        size_t size = 0;
        if (w->validate(stored, (size_t)nbytes, &size) != 0) {
            fail(w, SPORA_ERR_DECODE, shard, offset, nbytes, -1);
            return;
        }
        if ((int64_t)size != w->chunk_bytes) {
            fail(w, SPORA_ERR_SIZE, shard, offset, nbytes, (int64_t)size);
            return;
        }
        int got = w->decompress(stored, decoded, (size_t)w->chunk_bytes, 1);
        if (got != w->chunk_bytes) {
            fail(w, got <= 0 ? SPORA_ERR_DECODE : SPORA_ERR_SIZE, shard, offset, nbytes, got);
            return;
        }
    } else {
        if ((int64_t)nbytes != w->chunk_bytes) {
            fail(w, SPORA_ERR_SIZE, shard, offset, nbytes, (int64_t)nbytes);
            return;
        }
        decoded = stored;
    }
    copy_box(w, shard, decoded, origin, lo, hi);
}

static void work(spora_window *w, char *scratch) {
    for (;;) {
        int64_t job = __atomic_fetch_add(&w->next, 1, __ATOMIC_RELAXED);
        if (job >= w->njobs || __atomic_load_n(&w->error_code, __ATOMIC_ACQUIRE) != SPORA_OK) return;
        do_job(w, job, scratch);
    }
}

/* Helper threads, made on first use and kept for the process. One window at a time uses them;
 * a read that finds them busy runs on its own thread. */
static pid_t pool_pid; /* the process the pool belongs to; -pid while that process sets it up */
static struct {
    int busy;
    int64_t size;
    pthread_mutex_t mutex;
    pthread_cond_t wake, done;
    int64_t generation, wanted, active;
    spora_window *window;
} pool;

static void *helper_main(void *arg) {
    (void)arg;
#ifdef __linux__
    pthread_setname_np(pthread_self(), "spora_window");
#endif
    pthread_mutex_lock(&pool.mutex);
    int64_t seen = pool.generation;
    for (;;) {
        while (pool.generation == seen || pool.wanted == 0) {
            seen = pool.generation;
            pthread_cond_wait(&pool.wake, &pool.mutex);
        }
        seen = pool.generation;
        int64_t slot = pool.wanted--;
        spora_window *w = pool.window;
        pthread_mutex_unlock(&pool.mutex);
        work(w, w->scratch + slot * w->scratch_stride);
        pthread_mutex_lock(&pool.mutex);
        if (--pool.active == 0) pthread_cond_signal(&pool.done);
    }
    return NULL;
}

/* Claim the pool for `helpers` helpers; returns how many it lends (0: none, read alone). */
static int64_t pool_claim(int64_t helpers) {
    pid_t pid = getpid(), owner = __atomic_load_n(&pool_pid, __ATOMIC_ACQUIRE);
    if (owner != pid) {
        /* First use, or a forked child: the parent's helpers are not in this process. */
        if (owner == -pid || !__atomic_compare_exchange_n(&pool_pid, &owner, -pid, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
            return 0; /* another thread of this process is setting it up */
        memset(&pool, 0, sizeof pool);
        pthread_mutex_init(&pool.mutex, NULL);
        pthread_cond_init(&pool.wake, NULL);
        pthread_cond_init(&pool.done, NULL);
        __atomic_store_n(&pool_pid, pid, __ATOMIC_RELEASE);
    }
    if (__atomic_exchange_n(&pool.busy, 1, __ATOMIC_ACQUIRE)) return 0;
    while (pool.size < helpers) {
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&thread, &attr, helper_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        pool.size++;
    }
    if (pool.size == 0) {
        __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
        return 0;
    }
    return pool.size < helpers ? pool.size : helpers;
}

/* A contract violation found before the read starts (one thread, no lock yet). */
static int reject(spora_window *w, int64_t reason, int64_t at) {
    w->error_code = SPORA_ERR_CONTRACT;
    w->error_shard = -1;
    w->error_offset = at;
    w->error_nbytes = 0;
    w->error_detail = reason;
    return -1;
}

/* Check the array, window, output and scratch the caller passed, and set the work-sharing fields;
 * 0, or -1 with error_code SPORA_ERR_CONTRACT. Shard numbers and table slots are checked per chunk. */
static int prepare(spora_window *w) {
    const int64_t nd = w->ndim;
    if (nd < 1 || nd > SPORA_MAX_AXES) return reject(w, SPORA_BAD_ARRAY, -1);
    if (w->itemsize < 1 || w->nthreads < 1 || w->nfiles < 1 || w->table_slots < 1 || !w->fill || !w->out || !w->fds || !w->tables ||
        !w->scratch || (w->compressed && (!w->validate || !w->decompress)))
        return reject(w, SPORA_BAD_ARRAY, -1);
    int64_t chunk_bytes = w->itemsize, span = w->itemsize, extent, need;
    for (int64_t a = 0; a < nd; a++) {
        if (w->chunk[a] < 1 || w->per_shard[a] < 1 || w->shard_count[a] < 1 || __builtin_mul_overflow(chunk_bytes, w->chunk[a], &chunk_bytes))
            return reject(w, SPORA_BAD_ARRAY, a);
        if (w->start[a] < 0 || w->start[a] >= w->stop[a] || w->stop[a] > w->shape[a]) return reject(w, SPORA_BAD_WINDOW, a);
        if (w->out_stride[a] < 0 || __builtin_mul_overflow(w->stop[a] - w->start[a] - 1, w->out_stride[a], &extent) ||
            __builtin_add_overflow(span, extent, &span))
            return reject(w, SPORA_BAD_OUTPUT, a);
    }
    if (w->out_stride[nd - 1] != w->itemsize || w->out_bytes < span) return reject(w, SPORA_BAD_OUTPUT, -1);
    if (w->compressed && chunk_bytes > INT32_MAX) return reject(w, SPORA_BAD_ARRAY, -1); /* blosc 1 decodes at most 2 GiB */
    if (w->scratch_stride < chunk_bytes || __builtin_mul_overflow(w->nthreads, w->scratch_stride, &need) || need > w->scratch_bytes)
        return reject(w, SPORA_BAD_SCRATCH, -1);
    w->chunk_bytes = chunk_bytes;
    w->njobs = 1;
    for (int64_t a = 0; a < nd; a++) {
        w->chunk_lo[a] = w->start[a] / w->chunk[a];
        w->chunk_n[a] = (w->stop[a] - 1) / w->chunk[a] - w->chunk_lo[a] + 1;
        if (__builtin_mul_overflow(w->njobs, w->chunk_n[a], &w->njobs)) return reject(w, SPORA_BAD_WINDOW, a);
    }
    w->next = 0;
    return 0;
}

size_t spora_window_size(void) { return sizeof(spora_window); }

/* Read the window into w->out; returns 0, or -1 with the error_* fields set. */
int spora_window_read(spora_window *w) {
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    if (prepare(w) != 0) return -1;
    w->lock = &lock;
    w->error_code = SPORA_OK;
    int64_t helpers = w->nthreads - 1;
    if (helpers > w->njobs - 1) helpers = w->njobs - 1;
    if (helpers > SPORA_MAX_HELPERS) helpers = SPORA_MAX_HELPERS;
    if (w->njobs <= (w->parallel_min_bytes - 1) / w->chunk_bytes) helpers = 0; /* decodes fewer than parallel_min_bytes */
    if (helpers > 0) helpers = pool_claim(helpers);
    if (helpers > 0) {
        pthread_mutex_lock(&pool.mutex);
        pool.window = w;
        pool.wanted = helpers;
        pool.active = helpers;
        pool.generation++;
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.mutex);
    }
    work(w, w->scratch);
    if (helpers > 0) {
        pthread_mutex_lock(&pool.mutex);
        pool.active -= pool.wanted; /* helpers that have not woken up yet are not waited for */
        pool.wanted = 0;
        while (pool.active > 0) pthread_cond_wait(&pool.done, &pool.mutex);
        pool.window = NULL;
        pthread_mutex_unlock(&pool.mutex);
        __atomic_store_n(&pool.busy, 0, __ATOMIC_RELEASE);
    }
    pthread_mutex_destroy(&lock);
    w->lock = NULL;
    return w->error_code == SPORA_OK ? 0 : -1;
}
