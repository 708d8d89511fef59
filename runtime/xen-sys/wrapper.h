/*
 * Input to bindgen for bulkhead-xen-sys. Regenerate src/generated.rs with
 * `ci/gen-xen-bindings` (and verify with `ci/gen-xen-bindings --check`).
 *
 * Pin the libxl API. libxl.h in Xen 4.17 accepts exactly:
 *   0x040200 0x040300 0x040400 0x040500 0x040700 0x040800 0x041300 0x041400
 * (any other value is a hard #error). 0x041400 is the newest API level
 * available in 4.17: there were no API-breaking changes between 4.14 and
 * 4.17, so the newest level is spelled 0x041400. Omitting the define means
 * "whatever the installed libxl considers latest", which would let a
 * libxen-dev upgrade silently change signatures under us.
 */
#define LIBXL_API_VERSION 0x041400

#include <stdio.h> /* vsnprintf: formats xentoollog va_list messages */

#include <xentoollog.h>
#include <xenctrl.h>
#include <xenstore.h>
#include <xenevtchn.h>
#include <xengnttab.h>
#include <libxl.h>
#include <libxl_utils.h>
#include <libxenvchan.h>
