// How long a line stays cached on this machine when it is touched again only after a while
// (BENCHMARKS.md, "What a tick's memory costs").
//
// A working set of WS_KB is linked, line by line, in one random cycle. Each pass follows LOADS
// links (each load's address comes from the one before, as code walking structures through
// pointers does) and is timed; between passes the thread waits GAP_US, spinning on the clock
// (touching no memory) or, with a fourth argument "sleep", in nanosleep. A line is next
// touched after WS_KB·16 / LOADS passes: that revisit interval is printed with the mean time per
// load.
//
//   gcc -O2 -o /tmp/cache_revisit scripts/cache_revisit.c
//   /tmp/cache_revisit 4096 500 100          # 4 MiB, 500 loads a pass, 100 µs apart
//   /tmp/cache_revisit 4096 500 100 sleep
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_ns(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1e9 + now.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: cache_revisit WS_KB LOADS GAP_US [sleep]\n");
        return 2;
    }
    size_t bytes = (size_t)atoi(argv[1]) << 10;
    int loads = atoi(argv[2]), gap_us = atoi(argv[3]);
    int sleeping = argc > 4 && strcmp(argv[4], "sleep") == 0;
    size_t lines = bytes / 64;
    if (lines < 2 || loads < 1 || gap_us < 0) return 2;
    char *memory = aligned_alloc(64, bytes);
    size_t *order = malloc(lines * sizeof *order);
    if (memory == NULL || order == NULL) return 1;
    for (size_t i = 0; i < lines; i++) order[i] = i;
    srand(1);
    for (size_t i = lines - 1; i > 0; i--) {
        size_t j = (size_t)rand() % (i + 1), t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    for (size_t i = 0; i < lines; i++)
        *(void **)(memory + order[i] * 64) = memory + order[(i + 1) % lines] * 64;
    void *at = memory + order[0] * 64;
    int passes = 4000;
    double total = 0;
    for (int pass = 0; pass < passes; pass++) {
        if (gap_us > 0 && sleeping) {
            struct timespec gap = {0, gap_us * 1000L};
            nanosleep(&gap, NULL);
        } else if (gap_us > 0) {
            double until = now_ns() + gap_us * 1e3;
            while (now_ns() < until) {
            }
        }
        double start = now_ns();
        for (int k = 0; k < loads; k++) at = *(void **)at;
        total += now_ns() - start;
    }
    double revisit_ms = (double)lines / loads * gap_us / 1e3;
    printf("%zu KiB, %d loads a pass, %d us apart (%s): a line revisited every %.2f ms (plus the "
           "passes' own time); %.1f ns per load\n",
           bytes >> 10, loads, gap_us, sleeping ? "sleeping" : "spinning", revisit_ms,
           total / passes / loads);
    return at == NULL;
}
