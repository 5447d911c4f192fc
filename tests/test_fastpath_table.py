"""The C route table and packet transforms against the pure-Python twin (support/reference.py),
through the hooks of a development build (fastflannel.fastpath._testing), and the Forwarder's
own table and options."""
from __future__ import annotations

import random
import struct
import time

import numpy as np
import pytest

from fastflannel import fastpath as fp
from fastflannel.fastpath import _testing as hooks
from support import reference as ref

LENS = (0, 8, 16, 20, 24, 32)


def _rand_net(rng: random.Random, prefix: int) -> int:
    # a narrow space (10.0.0.0/12-ish) so inserts, removes and lookups collide often
    return (0x0A000000 | rng.getrandbits(20) << 4 | rng.getrandbits(4)) & ref.prefix_mask(prefix)


@pytest.mark.parametrize("seed", [1, 2])
def test_table_differential_random_ops(seed):
    """>= 100k random insert/remove/lookup/has_peer operations; every answer must agree."""
    rng = random.Random(seed)
    c, r = hooks.RouteTable(), ref.RouteTable()
    peers = [0xC0000200 + i for i in range(1, 40)]
    live: list[tuple[int, int]] = []
    for op in range(120_000):
        k = rng.random()
        if k < 0.35:
            prefix = rng.choice(LENS[1:]) if rng.random() > 0.01 else 0
            net = _rand_net(rng, prefix)
            peer, port = rng.choice(peers), rng.randrange(1, 65536)
            c.insert(net, prefix, peer, port)
            r.insert(net, prefix, peer, port)
            live.append((net, prefix))
        elif k < 0.6:
            if live and rng.random() < 0.8:
                net, prefix = live.pop(rng.randrange(len(live)))
            else:
                prefix = rng.choice(LENS)
                net = _rand_net(rng, prefix)
            exp = None
            try:
                r.remove(net, prefix)
            except KeyError as e:
                exp = e
            if exp is None:
                c.remove(net, prefix)
            else:
                with pytest.raises(KeyError):
                    c.remove(net, prefix)
        elif k < 0.97:
            dst = 0x0A000000 | rng.getrandbits(24) if rng.random() < 0.9 else rng.getrandbits(32)
            assert c.lookup(dst) == r.lookup(dst), (op, hex(dst))
        else:
            ip = rng.choice(peers) if rng.random() < 0.7 else rng.getrandbits(32)
            assert c.has_peer(ip) == r.has_peer(ip), (op, hex(ip))
        assert len(c) == len(r)
    got = [tuple(int(x) for x in row) for row in c.routes()]
    assert got == r.routes()


def test_table_probe_length_bounded_for_sequential_subnets():
    t = hooks.RouteTable()
    for i in range(10_000):
        t.insert(0x0A000000 + (i << 12), 20, 0xC0000200 + i % 250, 8285)
    assert len(t) == 10_000
    assert t.max_probe() <= 32
    assert t.lookup(0x0A000000 + (9_999 << 12) + 5) == (0xC0000200 + 9_999 % 250, 8285)


def test_table_rejects_bad_prefix():
    with pytest.raises(ValueError):
        hooks.RouteTable().insert(0, 33, 1, 1)
    with pytest.raises(KeyError):
        hooks.RouteTable().remove(0x0A000000, 8)


# ---- packet transforms ------------------------------------------------------------------------

def _packet(rng: random.Random, total: int, proto: int, ttl: int, frag: int = 0) -> bytes:
    ihl = rng.choice([5, 5, 5, 6, 15])
    total = max(total, ihl * 4)
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, rng.getrandbits(8), total,
                                rng.getrandbits(16), frag, ttl, proto, 0,
                                rng.getrandbits(32).to_bytes(4, "big"),
                                rng.getrandbits(32).to_bytes(4, "big")))
    hdr += bytes(rng.getrandbits(8) for _ in range(ihl * 4 - 20))
    struct.pack_into("!H", hdr, 10, ref.checksum(bytes(hdr)))
    return bytes(hdr) + bytes(rng.getrandbits(8) for _ in range(total - ihl * 4))


def test_transform_differential_on_valid_packets():
    rng = random.Random(7)
    for _ in range(5_000):
        proto = rng.choice([1, 6, 17, 47])
        frag = rng.choice([0, 0, 0x4000, 0x2000, 0x2001, 0x00B9])
        pkt = _packet(rng, rng.randrange(20, 200), proto, rng.randrange(0, 256), frag)
        assert hooks.ipv4_validate(pkt) == ref.validate(pkt) == ref.PKT_OK
        assert hooks.ipv4_dec_ttl(pkt) == ref.dec_ttl(pkt)
        tun_ip = rng.getrandbits(32)
        got = hooks.icmp_net_unreach(pkt, tun_ip)
        assert got == ref.icmp_net_unreach(pkt, tun_ip)
        if got is not None:
            assert ref.checksum(got[:20]) == 0 and ref.checksum(got[20:]) == 0
            assert got[8] == 8 and got[20:22] == b"\x03\x00" and got[28:] == pkt[:len(got) - 28]


def test_validate_differential_on_random_bytes():
    rng = random.Random(11)
    seen = set()
    for _ in range(50_000):
        b = bytearray(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
        if b and rng.random() < 0.6:
            b[0] = 0x40 | (b[0] & 0x0F)
        if len(b) >= 4 and rng.random() < 0.5:
            b[2:4] = struct.pack("!H", rng.randrange(0, 80))
        v = hooks.ipv4_validate(bytes(b))
        assert v == ref.validate(bytes(b)), bytes(b).hex()
        seen.add(v)
    assert seen == {ref.PKT_OK, ref.PKT_SHORT, ref.PKT_BAD_HEADER, ref.PKT_BAD_LENGTH}


def _header(ihl: int, total: int) -> bytes:
    """A valid IPv4 packet with an IHL*4-byte header (options zero) and `total` bytes."""
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, 0, 64, 6, 0,
                                bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + bytes(ihl * 4 - 20))
    struct.pack_into("!H", hdr, 10, ref.checksum(bytes(hdr)))
    return bytes(hdr) + bytes(total - ihl * 4)


def test_crafted_invalid_packets():
    good = _header(5, 40)
    assert hooks.ipv4_validate(good) == hooks.PKT_OK
    assert hooks.ipv4_validate(good[:19]) == hooks.PKT_SHORT
    assert hooks.ipv4_validate(b"\x60" + good[1:]) == hooks.PKT_BAD_HEADER          # IPv6 version
    assert hooks.ipv4_validate(b"\x44" + good[1:]) == hooks.PKT_BAD_HEADER          # IHL 4
    assert hooks.ipv4_validate(good[:39]) == hooks.PKT_BAD_LENGTH    # total length beyond the bytes
    assert hooks.ipv4_validate(good[:2] + struct.pack("!H", 19) + good[4:]) == hooks.PKT_BAD_LENGTH
    opts = _header(15, 60)                                           # a 60-byte header
    assert hooks.ipv4_validate(opts) == hooks.PKT_OK
    assert hooks.ipv4_validate(opts[:59]) == hooks.PKT_BAD_HEADER    # the header runs past the bytes
    with pytest.raises(ValueError):
        hooks.ipv4_dec_ttl(good[:10])
    with pytest.raises(ValueError):
        hooks.icmp_net_unreach(good[:10], 1)


def test_drop_reasons_are_the_drop_counters():
    """DROP_REASONS: the counters of dropped packets, in STAT_NAMES order, and only those."""
    assert fp.DROP_REASONS == tuple(n for n in fp.STAT_NAMES if n in fp.DROP_REASONS)
    assert {"no_route", "ttl", "short", "bad_header", "bad_length", "unknown_sender", "spoofed",
            "send_error", "tun_error", "tun_invalid", "dst_special", "dst_foreign"} == set(fp.DROP_REASONS)
    assert not {n for n in fp.DROP_REASONS if n.endswith(("_packets", "_bytes"))}


# ---- the Forwarder's own table (needs a TUN, so root) ------------------------------------------

@pytest.fixture
def forwarder(netns_required):
    with fp.Forwarder() as fw:
        fw.open(tun="fftbl%d", bind_ip="127.0.0.1", port=0, tun_ip="10.10.0.0")
        yield fw


def test_forwarder_routes_roundtrip(forwarder):
    rng = np.random.default_rng(5)
    arr = np.zeros(10_000, dtype=fp.ROUTE_DTYPE)
    arr["net"] = 0x0A000000 + (np.arange(10_000, dtype=np.uint32) << 12)
    arr["prefix"] = 20
    arr["peer_ip"] = rng.integers(1, 2**32, 10_000, dtype=np.uint32)
    arr["peer_port"] = 8285
    forwarder.replace_routes(arr)
    assert np.array_equal(forwarder.routes(), np.sort(arr, order=["net", "prefix"]))
    forwarder.replace_routes(arr.tobytes())                 # any buffer of the layout
    assert len(forwarder.routes()) == 10_000
    forwarder.add_route("10.200.0.0/16", "192.0.2.99", 9000)
    forwarder.remove_route("10.0.0.0/20")
    with pytest.raises(KeyError):
        forwarder.remove_route("10.0.0.0/20")
    with pytest.raises(ValueError):
        forwarder.add_route("10.200.0.1/16", "192.0.2.99", 9000)   # host bits set
    with pytest.raises(ValueError):
        forwarder.replace_routes(b"\0" * 12)                       # not a multiple of 11
    r = forwarder.routes()
    assert len(r) == 10_000
    assert (0x0AC80000, 16, 0xC0000263, 9000) in [tuple(int(x) for x in row) for row in r]


def test_forwarder_single_updates_match_reference(forwarder):
    """add_route/remove_route (copy + modify + publish in C) against the twin, 3k random ops."""
    rng = random.Random(9)
    twin = ref.RouteTable()
    for _ in range(3_000):
        prefix = rng.choice((16, 20, 24))
        net = _rand_net(rng, prefix) & 0xFF0FFFFF
        cidr = f"{net >> 24}.{net >> 16 & 255}.{net >> 8 & 255}.{net & 255}/{prefix}"
        if rng.random() < 0.6:
            peer = rng.randrange(1, 250)
            forwarder.add_route(cidr, f"192.0.2.{peer}", 8285)
            twin.insert(net, prefix, 0xC0000200 + peer, 8285)
        else:
            try:
                twin.remove(net, prefix)
            except KeyError:
                with pytest.raises(KeyError):
                    forwarder.remove_route(cidr)
            else:
                forwarder.remove_route(cidr)
    assert [tuple(int(x) for x in row) for row in forwarder.routes()] == twin.routes()


def test_forwarder_lifecycle(netns_required):
    fw = fp.Forwarder()
    with pytest.raises(RuntimeError):
        fw.start()
    fw.open(tun="fftbl%d", bind_ip="127.0.0.1", port=0)
    assert fw.tun_name.startswith("fftbl") and fw.port > 0
    fw.start()
    with pytest.raises(RuntimeError):
        fw.start()
    fw.stop()
    fw.stop()
    fw.start()                                  # restart after stop is allowed
    assert set(fw.stats()) == set(fp.STAT_NAMES)
    assert fw.stats_array().dtype == np.uint64
    fw.close()
    fw.close()
    for call in (fw.start, fw.stats, fw.routes, lambda: fw.add_route("10.0.0.0/8", "1.2.3.4")):
        with pytest.raises(RuntimeError, match="closed"):
            call()
    with pytest.raises(RuntimeError):
        fw.open()


def test_forwarder_adopts_a_tun_fd(netns_required):
    """tun_fd=: the forwarder dups a TUN fd opened elsewhere and reports the device's name."""
    import fcntl
    import os

    TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"ffadopt%d", IFF_TUN | IFF_NO_PI))
        with fp.Forwarder() as fw:
            fw.open(tun_fd=fd, bind_ip="127.0.0.1", port=0)
            assert fw.tun_name.startswith("ffadopt")
            fw.start()
        os.fstat(fd)                           # still ours after the forwarder closed its dup
    finally:
        os.close(fd)


def test_forwarder_features_and_workers(netns_required):
    """features: each offload part as asked (None follows offload), tcp_gro only with tun_tso;
    a part refused at open reads False and is counted; workers=N gives N queues of counters."""
    cases = [({}, dict.fromkeys(fp.OFFLOAD_PARTS, False)),
             ({"offload": True}, dict.fromkeys(fp.OFFLOAD_PARTS, True)),
             ({"offload": True, "udp_gso": False},
              {"tun_tso": True, "udp_gso": False, "udp_gro": True, "tcp_gro": True}),
             ({"udp_gro": True}, {"tun_tso": False, "udp_gso": False, "udp_gro": True, "tcp_gro": False}),
             ({"tcp_gro": True}, dict.fromkeys(fp.OFFLOAD_PARTS, False)),
             ({"offload": True, "_refuse": ("tun_tso",)},
              {"tun_tso": False, "udp_gso": True, "udp_gro": True, "tcp_gro": False}),
             ({"offload": True, "_refuse": ("udp_gro",), "workers": 3},
              {"tun_tso": True, "udp_gso": True, "udp_gro": False, "tcp_gro": True})]
    for kw, want in cases:
        with fp.Forwarder() as fw:
            fw.open(tun="fftbl%d", bind_ip="127.0.0.1", port=0, **kw)
            f = fw.features
            assert f.pop("workers") == fw.workers == kw.get("workers", 1)
            assert f == want, kw
            assert fw.stats()["offload_fallbacks"] == len(kw.get("_refuse", ()))
            assert len(fw.queue_stats()) == fw.workers
            fw.start()


def test_forwarder_workers_adopt_a_multiqueue_tun(netns_required):
    """workers=2 with tun_fd=: the fd must be a multi-queue TUN (more queues are opened by its name)."""
    import fcntl
    import os

    TUNSETIFF, IFF_TUN, IFF_NO_PI, IFF_MULTI_QUEUE = 0x400454CA, 0x0001, 0x1000, 0x0100
    for flags, ok in ((IFF_TUN | IFF_NO_PI, False), (IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE, True)):
        fd = os.open("/dev/net/tun", os.O_RDWR)
        try:
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", b"ffmq%d", flags))
            with fp.Forwarder() as fw:
                if not ok:
                    with pytest.raises(ValueError):
                        fw.open(tun_fd=fd, bind_ip="127.0.0.1", port=0, workers=2)
                    continue
                fw.open(tun_fd=fd, bind_ip="127.0.0.1", port=0, workers=2)
                assert fw.tun_name.startswith("ffmq") and fw.workers == 2
                fw.start()
        finally:
            os.close(fd)


def _thread_names() -> list:
    import os
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:            # a thread that just ended
            pass
    return names


def test_forwarder_workers_are_named_by_direction_and_queue(netns_required):
    """Each worker thread is named ff-tx<q> / ff-rx<q> (what perf and top show); stop ends them."""
    with fp.Forwarder() as fw:
        fw.open(tun="fftbl%d", bind_ip="127.0.0.1", port=0, workers=2)
        fw.start()
        deadline = time.monotonic() + 5
        want = ["ff-rx0", "ff-rx1", "ff-tx0", "ff-tx1"]
        while sorted(n for n in _thread_names() if n.startswith("ff-")) != want:
            assert time.monotonic() < deadline, _thread_names()
            time.sleep(0.01)
        fw.stop()
        assert not [n for n in _thread_names() if n.startswith("ff-")]


def test_forwarder_duplex_runs_one_thread_per_queue(netns_required):
    """duplex=True: one thread per TUN queue (ff-io<q>) serves both directions."""
    with fp.Forwarder() as fw:
        fw.open(tun="fftbl%d", bind_ip="127.0.0.1", port=0, workers=2, duplex=True)
        assert fw.duplex
        fw.start()
        deadline = time.monotonic() + 5
        while sorted(n for n in _thread_names() if n.startswith("ff-")) != ["ff-io0", "ff-io1"]:
            assert time.monotonic() < deadline, _thread_names()
            time.sleep(0.01)
        fw.stop()
        assert not [n for n in _thread_names() if n.startswith("ff-")]


def test_forwarder_rejects_bad_options(netns_required):
    for kw in ({"batch": 0}, {"batch": 5000}, {"port": 70000}, {"workers": 0}, {"workers": 65},
               {"bind_ip": "not-an-ip"}, {"tun": "x" * 20}, {"_refuse": ("gro",)}):
        with pytest.raises(ValueError):
            fp.Forwarder().open(**{"tun": "fftbl%d", **kw})
    with pytest.raises(OSError) as e:             # a kernel refusal keeps its errno
        fp.Forwarder().open(tun="fftbl%d", bind_ip="192.0.2.200", port=0)   # not a local address
    assert e.value.errno == 99                     # EADDRNOTAVAIL


def test_forwarder_concurrent_updates_then_close(netns_required):
    """Route updates from several threads while the workers run; close() waits for them, after
    which every call raises RuntimeError. Must neither crash nor leave a table half-published."""
    import threading

    arr = np.zeros(10_000, dtype=fp.ROUTE_DTYPE)
    arr["net"] = 0x0A000000 + (np.arange(10_000, dtype=np.uint32) << 12)
    arr["prefix"], arr["peer_ip"], arr["peer_port"] = 20, 0xC000020B, 8285
    fw = fp.Forwarder()
    fw.open(tun="fftbl%d", bind_ip="127.0.0.1", port=0)
    fw.start()
    errors: list[BaseException] = []
    counts = [0, 0, 0]

    def worker(k: int) -> None:
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if k == 0:
                    fw.replace_routes(arr)
                else:
                    fw.add_route(f"10.{200 + k}.0.0/16", "192.0.2.11", 8285)
                    try:
                        fw.remove_route(f"10.{200 + k}.0.0/16")
                    except KeyError:        # a whole-table replacement came in between
                        pass
                counts[k] += 1
        except RuntimeError as e:
            if "closed" not in str(e):  # the only RuntimeError due: a call after close()
                errors.append(e)
        except BaseException as e:      # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert len(fw.routes()) >= 10_000
    fw.close()
    for t in threads:
        t.join(15)
    assert not errors, errors
    assert all(not t.is_alive() for t in threads)
    assert all(c > 0 for c in counts), counts
