/* The C core as production builds it (no FF_TEST_HOOKS): the fault injection of the fallback
 * tests does not exist there, and asking for it is refused with -ENOTSUP before anything is
 * opened (so this runs without privileges). */
#include <errno.h>

#include "ff_check.h"
#include "ff_fwd.h"

int main(void)
{
    uint32_t parts[] = {FF_F_TUN_TSO, FF_F_UDP_GSO, FF_F_UDP_GRO, FF_F_TCP_GRO, FF_F_OFFLOAD};
    for (unsigned i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        struct ff_opts o = {.tun_name = "ffprod%d", .tun_fd = -1, .flags = FF_F_OFFLOAD,
                            .refuse = parts[i]};
        struct ff_fwd *fw = NULL;
        CHECK_EQ(ff_fwd_open(&fw, &o), -ENOTSUP);
        CHECK(fw == NULL);
    }
    CHECK_DONE();
}
