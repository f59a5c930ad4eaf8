/* The FMA throughput ceiling of one core: 24 independent 16-lane fused multiply-adds per
 * iteration (no loads), the bound that a GEMM micro-kernel is compared against in
 * docs/BENCHMARKS.md. Build and run (run one copy per core at once to check that all-core
 * clocks hold):
 *   gcc -O2 -mavx512f -mfma scripts/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 */
#include <immintrin.h>
#include <stdio.h>
#include <time.h>

int main(void) {
  __m512 acc[24];
  const __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
  for (int i = 0; i < 24; i++) acc[i] = _mm512_set1_ps((float)i);
  const long iters = 200000000;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long it = 0; it < iters; it++) {
#pragma GCC unroll 24
    for (int i = 0; i < 24; i++) acc[i] = _mm512_fmadd_ps(acc[i], b, c);
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  const double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
  float sum = 0;
  for (int i = 0; i < 24; i++) sum += _mm512_reduce_add_ps(acc[i]);
  /* 24 FMAs x 16 lanes x 2 flops per iteration; the sum keeps the loop alive. */
  printf("%.1f GFLOP/s on one core (checksum %g)\n", iters * 24.0 * 32.0 / s / 1e9, sum);
  return 0;
}
