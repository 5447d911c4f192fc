/* Minimal assertion helpers for the C unit tests: print the failing expression, count, go on. */
#ifndef FF_CHECK_H
#define FF_CHECK_H
#include <stdio.h>

static int ff_failures;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        if (!(cond)) {                                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ff_failures++;                                                           \
        }                                                                            \
    } while (0)

#define CHECK_EQ(a, b)                                                               \
    do {                                                                             \
        long long _a = (long long)(a), _b = (long long)(b);                          \
        if (_a != _b) {                                                              \
            fprintf(stderr, "%s:%d: CHECK_EQ failed: %s = %lld, %s = %lld\n",        \
                    __FILE__, __LINE__, #a, _a, #b, _b);                             \
            ff_failures++;                                                           \
        }                                                                            \
    } while (0)

#define CHECK_DONE()                                                                 \
    do {                                                                             \
        if (ff_failures)                                                             \
            fprintf(stderr, "%d check(s) failed\n", ff_failures);                    \
        return ff_failures ? 1 : 0;                                                  \
    } while (0)

/* xorshift64*: deterministic randomness for the tests */
static unsigned long long ff_rng = 0x9e3779b97f4a7c15ull;
static inline unsigned long long ff_rand(void)
{
    ff_rng ^= ff_rng >> 12;
    ff_rng ^= ff_rng << 25;
    ff_rng ^= ff_rng >> 27;
    return ff_rng * 2685821657736338717ull;
}
#endif
