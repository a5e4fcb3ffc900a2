/* LD_PRELOAD library: the process sees an AVX2-only x86 CPU (Haswell level: no AVX-512, no VNNI, no AMX).
 *
 * Runtimes pick their kernels from CPUID (ONNX Runtime's MLAS, XNNPACK's cpuinfo, numpy). With CPUID
 * faulting (arch_prctl ARCH_SET_CPUID 0, Linux >= 4.12 on a CPU or hypervisor that offers it) every CPUID
 * instruction traps; the SIGSEGV handler runs the real CPUID and clears the AVX-512, VNNI and AMX bits, so
 * those runtimes take their AVX2 code paths on this very CPU. It sets EVIM_DEPLOY_CPUID_MASK=avx2, which
 * evim_deploy.host reads, so host records and kernel warnings describe what runs. Where faulting is unavailable
 * the library refuses to run (exit 97) rather than let a measurement pass as AVX2 that is not.
 * Build and use: bench/cpuid.py (`bench/int8_speed.py --isa avx2`), or by hand:
 *   gcc -O2 -shared -fPIC -o cpuid_avx2.so cpuid_avx2.c && LD_PRELOAD=$PWD/cpuid_avx2.so python ...
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

#define ARCH_SET_CPUID 0x1012

static int set_cpuid(int enabled) { return (int)syscall(SYS_arch_prctl, ARCH_SET_CPUID, enabled); }

static void mask(uint32_t leaf, uint32_t sub, uint32_t *a, uint32_t *b, uint32_t *c, uint32_t *d) {
    if (leaf == 7 && sub == 0) {
        *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));  /* VBMI, VBMI2, VNNI, BITALG, VPOPCNTDQ */
        *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 22) | (1u << 23) | (1u << 24) | (1u << 25));  /* 4VNNIW, 4FMAPS, VP2INTERSECT, AMX, FP16 */
    } else if (leaf == 7 && sub == 1) {
        *a &= ~((1u << 4) | (1u << 5) | (1u << 23));  /* AVX-VNNI, AVX512_BF16, AVX-IFMA */
        *d &= ~((1u << 4) | (1u << 5) | (1u << 10) | (1u << 19));  /* AVX-VNNI-INT8, AVX-NE-CONVERT, AVX-VNNI-INT16, AVX10 */
    } else if (leaf == 0xd && sub == 0) {
        *a &= ~(0xe0u | (3u << 17));  /* XCR0 components the OS may enable: opmask/ZMM state, AMX tiles */
    }
}

static void on_sigsegv(int sig, siginfo_t *info, void *context) {
    ucontext_t *uc = (ucontext_t *)context;
    greg_t *r = uc->uc_mcontext.gregs;
    const uint8_t *ip = (const uint8_t *)r[REG_RIP];
    if (ip[0] != 0x0f || ip[1] != 0xa2) {  /* not CPUID: a real crash */
        signal(SIGSEGV, SIG_DFL);
        return;
    }
    uint32_t leaf = (uint32_t)r[REG_RAX], sub = (uint32_t)r[REG_RCX], a, b, c, d;
    set_cpuid(1);
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    set_cpuid(0);
    mask(leaf, sub, &a, &b, &c, &d);
    r[REG_RAX] = a; r[REG_RBX] = b; r[REG_RCX] = c; r[REG_RDX] = d;
    r[REG_RIP] += 2;
}

__attribute__((constructor)) static void install(void) {
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_sigaction = on_sigsegv;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigaction(SIGSEGV, &action, NULL);
    if (set_cpuid(0) != 0) {
        fprintf(stderr, "cpuid_avx2: this kernel/CPU offers no CPUID faulting (arch_prctl ARCH_SET_CPUID: %m); "
                        "refusing to run unmasked\n");
        _exit(97);
    }
    setenv("EVIM_DEPLOY_CPUID_MASK", "avx2", 1);
}
