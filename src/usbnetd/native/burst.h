/*
 * What a C TX pump (FrameTx in _frametx.c, NcmPump in _fasttx.c) offers the C event loop (_fastpath.c's
 * burst()), which runs the data path's wake-ups without Python: a struct of entry points handed over in a
 * PyCapsule named BURST_TX_CAPSULE (the pump's burst_hooks() method), so that the three extension modules
 * need not link against each other.
 *
 * Every entry point runs with the GIL released, from the event-loop thread, while burst() holds the pump
 * busy (set_busy), so no Python method of the pump can run in between.
 */
#ifndef USBNETD_BURST_H
#define USBNETD_BURST_H

#include <stdint.h>
#include <time.h>

/* CLOCK_MONOTONIC in nanoseconds: the clock of the pumps' flush deadlines and of burst()'s timeout (the one
 * time.monotonic() reads, so Python can compare them). */
static inline long long mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

#define BURST_TX_CAPSULE "usbnetd.native.burst_tx"

struct burst_tx {
    void *obj;
    /* transfers a TAP read can go into now (0: leave the TAP out of poll until a completion) */
    long (*room)(void *obj);
    /* DataPath.on_tap_readable: read up to `budget` frames into transfers and submit them */
    void (*fill)(void *obj, long budget);
    /* after libusb's events and at a deadline: what process() does for the pump (NCM: a completion or the
     * flush timer sends a partial NTB, a super-frame's waiting segments go on); `now_ns` is CLOCK_MONOTONIC */
    void (*tick)(void *obj, long long now_ns);
    /* the next time tick() must run without an event (NCM's flush timer), or -1 */
    long long (*deadline)(void *obj);
    /* something Python must see now: a failed transfer (the burst log), a halt, a gone device, a failed read */
    int (*attention)(void *obj);
    /* the pump's (and its framer's) busy flags, held for the whole burst */
    void (*set_busy)(void *obj, int on);
};

#endif
