/* Cascade information reconciliation: two message-driven state machines (Bob drives, Alice answers).
 * Pure C11, no Python. Bit i of a packed byte key is (buf[i >> 3] >> (7 - (i & 7))) & 1; internally
 * keys live in uint64 words with the same MSB-first order (bit i = word[i >> 6] >> (63 - (i & 63))). */
#ifndef SDQKD_CASCADE_CORE_H
#define SDQKD_CASCADE_CORE_H

#include <stddef.h>
#include <stdint.h>

#define CS_MAXPASS 24
#define CS_MAX_BITS (1u << 31) /* keeps every permuted index inside uint32 */

enum { CS_ORIGINAL = 0, CS_OPTIMIZED = 1, CS_NVARIANTS = 2 };

/* Switches (the schedules are public, the rest for experiments and tests): RANDPERM must be the same at
 * both ends (the parameter digest covers it); the others change only what Bob asks, and when. */
enum {
    CS_FLAG_RANDPERM = 1,   /* explicit uniformly random permutations instead of the fast structured ones */
    CS_FLAG_PARALLEL = 2,   /* every odd block bisects at once (fewest round trips, more leakage) */
    CS_FLAG_SERIAL = 4,     /* larger blocks wait for all smaller-pass bisections (most round trips) */
    CS_FLAG_NOREUSE = 8,    /* disable known-parity reuse even if the variant has it */
    CS_FLAG_NOBPI = 16,     /* disable block parity inference even if the variant has it */
    CS_FLAG_REUSE = 32,     /* force reuse on */
    CS_FLAG_BPI = 64,       /* force block parity inference on */
    CS_FLAG_BALANCED = 128, /* optimised variants: a quarter of a pass's blocks bisect at once; Bob halves pass 1's */
    CS_FLAG_MASK = 255
};

enum { CS_OK = 0, CS_EINVAL = -1, CS_ENOMEM = -2 };

typedef struct {
    uint32_t n;     /* key length in bits */
    int variant, flags, npass, reuse, bpi;
    double tau, qmin; /* scheduling: a pass p >= 1 runs at most max(qmin, tau * nb[p]) bisections at a time,
                         minus those still running in smaller passes; tau < 0: no limit */
    uint64_t seed;
    uint32_t L[CS_MAXPASS];  /* length of the pass's permuted order (>= n: padding bits are zero on both sides) */
    uint32_t k[CS_MAXPASS];  /* block size */
    uint32_t nb[CS_MAXPASS]; /* number of blocks */
    int kshift[CS_MAXPASS];  /* log2(k) if k is a power of two, else -1 */
    double kinv[CS_MAXPASS];
    uint32_t digest;         /* of everything above: detects mismatched parameters between the ends */
} cs_params;

typedef struct cs_bob cs_bob;
typedef struct cs_alice cs_alice;

/* Parameters; returns CS_OK or CS_EINVAL with a message in err. */
int cs_params_init(cs_params *prm, uint32_t n, double qber, int variant, uint64_t seed, int flags, char *err,
                   size_t errlen);

/* All functions returning int give CS_OK / CS_EINVAL (message in *_error()) / CS_ENOMEM. */
int cs_bob_new(cs_bob **out, const uint8_t *key, size_t keylen, uint32_t n, double qber, int variant, uint64_t seed,
               int flags, char *err, size_t errlen);
void cs_bob_free(cs_bob *b);
int cs_bob_start(cs_bob *b, const uint8_t **msg, size_t *len);
/* *msg == NULL after success means the protocol finished. */
int cs_bob_handle(cs_bob *b, const uint8_t *reply, size_t rlen, const uint8_t **msg, size_t *len);
const char *cs_bob_error(const cs_bob *b);
void cs_bob_corrected(const cs_bob *b, uint8_t *out, size_t outlen); /* outlen >= ceil(n/8) */
uint64_t cs_bob_leaked(const cs_bob *b);
uint64_t cs_bob_channel_uses(const cs_bob *b);
uint64_t cs_bob_corrections(const cs_bob *b);
int cs_bob_done(const cs_bob *b);
int cs_bob_started(const cs_bob *b);
const cs_params *cs_bob_params(const cs_bob *b);

int cs_alice_new(cs_alice **out, const uint8_t *key, size_t keylen, uint32_t n, double qber, int variant,
                 uint64_t seed, int flags, char *err, size_t errlen);
void cs_alice_free(cs_alice *a);
int cs_alice_handle(cs_alice *a, const uint8_t *req, size_t qlen, const uint8_t **msg, size_t *len);
const char *cs_alice_error(const cs_alice *a);
uint64_t cs_alice_leaked(const cs_alice *a);

/* Message inspection for tests: kind 1 = request, 2 = reply; parities = parity bits asked/carried. */
int cs_inspect(const uint8_t *m, size_t len, int *kind, uint64_t *round, uint64_t *parities, char *err,
               size_t errlen);

/* Appends the frame checksum (tests build arbitrary well-framed messages with it). out has len + 4 bytes. */
size_t cs_seal(const uint8_t *body, size_t len, uint8_t *out);

#endif
