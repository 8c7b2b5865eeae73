/* LD_PRELOAD heap-allocation counter for bench/request_cost.
 *
 * Counts every call of malloc, calloc, realloc and the aligned allocators
 * (operator new in libstdc++ calls malloc or aligned_alloc) in a counter
 * kept in a shared file mapping named by MALLOC_COUNT_FILE, so the bench
 * reads it while the server runs: allocations per request are the growth
 * of the counter over a run of N requests. The real allocators are glibc's
 * __libc_* entry points, so no dlsym (which itself allocates) is needed. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static unsigned long local_count;
static volatile unsigned long *count = &local_count;

__attribute__((constructor)) static void map_counter(void) {
  const char *path = getenv("MALLOC_COUNT_FILE");
  if (!path) return;
  int fd = open(path, O_RDWR | O_CREAT, 0644);
  if (fd < 0) return;
  if (ftruncate(fd, sizeof(unsigned long)) == 0) {
    void *p = mmap(NULL, sizeof(unsigned long), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p != MAP_FAILED) count = p;
  }
  close(fd);
}

static void counted(void) { __atomic_fetch_add(count, 1, __ATOMIC_RELAXED); }

void *malloc(size_t n) { counted(); return __libc_malloc(n); }
void *calloc(size_t a, size_t b) { counted(); return __libc_calloc(a, b); }
void *realloc(void *p, size_t n) { counted(); return __libc_realloc(p, n); }
void *memalign(size_t a, size_t n) { counted(); return __libc_memalign(a, n); }
void *aligned_alloc(size_t a, size_t n) { counted(); return __libc_memalign(a, n); }
int posix_memalign(void **out, size_t a, size_t n) {
  counted();
  void *p = __libc_memalign(a, n);
  if (!p) return 12; /* ENOMEM */
  *out = p;
  return 0;
}
