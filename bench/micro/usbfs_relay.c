/* usbfs_relay: the least work a user-space CDC-ECM driver can do per frame, for the RTT floor measurement.
 *
 * Not a driver: no control requests, no notifications, no error handling beyond giving up, no statistics.
 * It exists to answer one question (docs/performance.md, "The floor of any usbfs driver"): how close to the
 * kernel's driver can *any* user-space driver get on an echo, when every frame has to cross usbfs? It makes
 * the fewest wake-ups and system calls the Linux usbfs interface (Documentation/driver-api/usb/usb.rst,
 * "The USB devio interface"; include/uapi/linux/usbdevice_fs.h) allows:
 *   - one thread blocks in read() on the TAP and submits each frame as one bulk OUT URB (USBDEVFS_SUBMITURB):
 *     one wake-up and two system calls per request, no poll() before the read;
 *   - another blocks in USBDEVFS_REAPURB (the blocking reap: no poll() and no trailing EAGAIN reap), writes
 *     each bulk IN URB's frame to the TAP and resubmits the URB: one wake-up and three system calls per
 *     reply, one wake-up and one call per bulk OUT completion;
 *   - no libusb, no clock reads, no Python.
 * With --spin neither thread ever sleeps: the TAP is read non-blocking and the URBs reaped with
 * USBDEVFS_REAPURBNDELAY in tight loops, so an echo costs no wake-up at all (two CPUs at 100 %: a bound, not
 * a design).
 * usbnetd (python-libusb1 over libusb over usbfs) adds to that a poll() per wake-up, libusb's own poll and
 * trailing reap, a clock read per turn, and the TAP read that finds the queue empty.
 *
 *     usbfs_relay [--spin] /dev/bus/usb/BBB/DDD TAPNAME
 *
 * It claims the first communications interface and the CDC data interface (class 0x0A) whose alternate
 * setting has a bulk IN and a bulk OUT endpoint, selects that setting (CDC ECM 1.2 section 3.3: the data
 * interface's second setting carries the traffic), and creates TAPNAME. It runs until killed. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/usbdevice_fs.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define N_IN 4   /* bulk IN URBs in flight, as usbnetd keeps for one-frame-per-transfer classes */
#define N_OUT 8  /* bulk OUT URBs; an echo needs one */
#define BUF_SIZE 2048 /* one Ethernet frame (1514) and room */

static int usb_fd, tap_fd;
static unsigned char ep_in, ep_out;
static unsigned out_max_packet = 512;
static struct usbdevfs_urb in_urb[N_IN], out_urb[N_OUT];
static unsigned char in_buf[N_IN][BUF_SIZE], out_buf[N_OUT][BUF_SIZE];
static atomic_int out_busy[N_OUT];
static int spin;

static void die(const char *what)
{
    perror(what);
    exit(1);
}

static void submit_in(int k)
{
    memset(&in_urb[k], 0, sizeof in_urb[k]);
    in_urb[k].type = USBDEVFS_URB_TYPE_BULK;
    in_urb[k].endpoint = ep_in;
    in_urb[k].buffer = in_buf[k];
    in_urb[k].buffer_length = BUF_SIZE;
    in_urb[k].usercontext = (void *)(long)k;
    if (ioctl(usb_fd, USBDEVFS_SUBMITURB, &in_urb[k]) < 0)
        die("usbfs_relay: submit IN");
}

static void *receive(void *arg)
{
    (void)arg;
    for (;;) {
        struct usbdevfs_urb *u;
        if (ioctl(usb_fd, spin ? USBDEVFS_REAPURBNDELAY : USBDEVFS_REAPURB, &u) < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            die("usbfs_relay: reap");
        }
        int k = (int)(long)u->usercontext;
        if (u->endpoint & 0x80) {
            /* A zero-length IN transfer is a ZLP after a frame of a multiple of wMaxPacketSize: no frame. */
            if (u->status == 0 && u->actual_length > 0 && u->actual_length <= BUF_SIZE &&
                write(tap_fd, in_buf[k], (size_t)u->actual_length) < 0 && errno != EIO)
                perror("usbfs_relay: TAP write"); /* EIO: the TAP is not up yet */
            submit_in(k);
        } else {
            atomic_store(&out_busy[k], 0);
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--spin") == 0) {
        spin = 1;
        argv++;
        argc--;
    }
    if (argc != 3) {
        fprintf(stderr, "usage: usbfs_relay [--spin] /dev/bus/usb/BBB/DDD TAPNAME\n");
        return 2;
    }
    usb_fd = open(argv[1], O_RDWR);
    if (usb_fd < 0)
        die("usbfs_relay: open");
    /* Reading the usbfs node gives the device descriptor (18 bytes) and then the configuration descriptors. */
    unsigned char d[8192];
    ssize_t n = read(usb_fd, d, sizeof d);
    if (n < 18)
        die("usbfs_relay: descriptors");
    int comm_if = -1, data_if = -1, data_alt = -1, cur_if = -1, cur_alt = -1, cls = 0;
    unsigned char in = 0, out = 0;
    unsigned out_mps = 0;
    for (ssize_t i = 18; i + 2 <= n && d[i] >= 2 && i + d[i] <= n; i += d[i]) {
        if (d[i + 1] == 4 && d[i] >= 9) { /* interface descriptor */
            cur_if = d[i + 2];
            cur_alt = d[i + 3];
            cls = d[i + 5];
            in = out = 0;
            if (cls == 0x02 && comm_if < 0)
                comm_if = cur_if;
        } else if (d[i + 1] == 5 && d[i] >= 7 && cls == 0x0a && (d[i + 3] & 3) == 2) { /* bulk endpoint */
            if (d[i + 2] & 0x80) {
                in = d[i + 2];
            } else {
                out = d[i + 2];
                out_mps = (unsigned)(d[i + 4] | (d[i + 5] << 8)) & 0x7ff;
            }
            if (in && out && data_if < 0) {
                data_if = cur_if;
                data_alt = cur_alt;
                ep_in = in;
                ep_out = out;
                if (out_mps)
                    out_max_packet = out_mps;
            }
        }
    }
    if (data_if < 0) {
        fprintf(stderr, "usbfs_relay: no CDC data interface with a bulk IN and OUT endpoint\n");
        return 1;
    }
    unsigned int ifnum = (unsigned)comm_if;
    if (comm_if >= 0 && ioctl(usb_fd, USBDEVFS_CLAIMINTERFACE, &ifnum) < 0)
        die("usbfs_relay: claim the communications interface");
    ifnum = (unsigned)data_if;
    if (ioctl(usb_fd, USBDEVFS_CLAIMINTERFACE, &ifnum) < 0)
        die("usbfs_relay: claim the data interface");
    struct usbdevfs_setinterface setting = {(unsigned)data_if, (unsigned)data_alt};
    if (ioctl(usb_fd, USBDEVFS_SETINTERFACE, &setting) < 0)
        die("usbfs_relay: set the data interface's setting");
    tap_fd = open("/dev/net/tun", O_RDWR | (spin ? O_NONBLOCK : 0));
    if (tap_fd < 0)
        die("usbfs_relay: /dev/net/tun");
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
    strncpy(ifr.ifr_name, argv[2], IFNAMSIZ - 1);
    if (ioctl(tap_fd, TUNSETIFF, &ifr) < 0)
        die("usbfs_relay: TUNSETIFF");
    for (int k = 0; k < N_IN; k++)
        submit_in(k);
    pthread_t rx;
    if (pthread_create(&rx, NULL, receive, NULL) != 0)
        die("usbfs_relay: thread");
    fprintf(stderr, "usbfs_relay: interfaces %d and %d (setting %d), IN 0x%02x, OUT 0x%02x, TAP %s%s\n", comm_if,
            data_if, data_alt, ep_in, ep_out, argv[2], spin ? ", spinning" : "");
    for (int k = 0;; k = (k + 1) % N_OUT) {
        while (atomic_load(&out_busy[k]))
            sched_yield(); /* every OUT URB in flight: only under load, which this tool does not measure */
        ssize_t m = read(tap_fd, out_buf[k], BUF_SIZE);
        if (m < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue; /* EAGAIN: --spin, and nothing queued */
            die("usbfs_relay: TAP read");
        }
        memset(&out_urb[k], 0, sizeof out_urb[k]);
        out_urb[k].type = USBDEVFS_URB_TYPE_BULK;
        out_urb[k].endpoint = ep_out;
        out_urb[k].buffer = out_buf[k];
        out_urb[k].buffer_length = (int)m;
        /* CDC ECM 1.2 section 3.3.1: a frame of a multiple of wMaxPacketSize ends with a zero-length packet */
        out_urb[k].flags = (m % out_max_packet) == 0 ? USBDEVFS_URB_ZERO_PACKET : 0;
        out_urb[k].usercontext = (void *)(long)k;
        atomic_store(&out_busy[k], 1);
        if (ioctl(usb_fd, USBDEVFS_SUBMITURB, &out_urb[k]) < 0) {
            perror("usbfs_relay: submit OUT");
            atomic_store(&out_busy[k], 0);
        }
    }
}
