"""Property tests (hypothesis) for every parser of outside input on the control plane (issue 8):
the network config JSON (agent/config.py), lease values (agent/lease.py decode/encode), lease keys
(parse/format, flannel's regex quirks of docs/flannel-compat.md §"Keys") and the command line
(agent/flags.py, Go's flag syntax). Two kinds of property: what is valid is read exactly as
flannel (Go) reads it, and nothing hostile ever raises anything but the project's own error.
The Go behaviour the models encode was checked with go1.19's encoding/json and strconv.
Example counts are bounded so the whole file runs in a few seconds.
"""
from __future__ import annotations

import ipaddress
import json
import string

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fastflannel.agent.config import NetworkConfig, parse_config
from fastflannel.agent.errors import ConfigError, FastflannelError, FlagError, HelpRequested, LeaseFormatError
from fastflannel.agent.flags import _go_int, parse_flags
from fastflannel.agent.lease import (
    MAX_LEASE_VALUE_BYTES,
    LeaseAttrs,
    decode_attrs,
    encode_attrs,
    parse_subnet_key,
    subnet_key,
)

FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MANY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_scalar = st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False, allow_infinity=False) \
    | st.text(max_size=12)
_json = st.recursive(_scalar, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                     max_leaves=10)


def spellings(name: str, fold: bool = True):
    """Spellings of a field name that Go's decoder matches: any case per letter, KELVIN SIGN for
    k and LONG S for s (Unicode simple folding); `fold=False`: case only (a value, lower-cased)."""
    def one(ch):
        alts = {ch.lower(), ch.upper()}
        if fold and ch.lower() == "k":
            alts.add("\u212a")
        if fold and ch.lower() == "s":
            alts.add("\u017f")
        return st.sampled_from(sorted(alts))
    return st.tuples(*[one(c) for c in name]).map("".join)


def dumps_pairs(pairs) -> str:
    """A JSON object with exactly these (key, value) pairs, duplicates and order kept."""
    return "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}"


# ---- config JSON ---------------------------------------------------------------------------------

@st.composite
def valid_configs(draw):
    """(document, expected NetworkConfig fields) for a config flannel accepts."""
    plen = draw(st.integers(8, 26))
    base = draw(st.integers(0, 2**32 - 1)) & ~((1 << (32 - plen)) - 1) & 0xFFFFFFFF
    network = ipaddress.IPv4Network((base, plen))
    host_bits = draw(st.integers(0, (1 << (32 - plen)) - 1))          # ParseCIDR masks them
    sl = draw(st.sampled_from([0]) | st.integers(plen + 2, min(30, plen + 10)))
    eff = sl or (24 if plen <= 22 else plen + 2)
    size, count = 1 << (32 - eff), 1 << (eff - plen)
    lo = draw(st.none() | st.integers(1, count - 1))
    hi = draw(st.none() | st.integers(1, count - 1))
    btype = draw(st.sampled_from(["udp", "vxlan", "host-gw"]))
    pairs = [(draw(spellings("Network")), f"{ipaddress.IPv4Address(base + host_bits)}/{plen}")]
    if sl or draw(st.booleans()):
        pairs.append((draw(spellings("SubnetLen")), sl))
    if lo is not None:
        pairs.append((draw(spellings("SubnetMin")), str(ipaddress.IPv4Address(base + lo * size))))
    if hi is not None:
        pairs.append((draw(spellings("SubnetMax")), str(ipaddress.IPv4Address(base + hi * size))))
    pairs.append((draw(spellings("Backend")), {draw(spellings("Type")): draw(spellings(btype, fold=False))}))
    pairs += draw(st.lists(st.tuples(st.sampled_from(["Foo", "IPv6Network", "EnableNFTables"]), _json), max_size=2))
    pairs = draw(st.permutations(pairs))
    want = dict(network=network, subnet_len=eff,
                subnet_min=ipaddress.IPv4Address(base + (lo if lo is not None else 1) * size),
                subnet_max=ipaddress.IPv4Address(base + (hi if hi is not None else count - 1) * size),
                backend_type=btype)
    return dumps_pairs(pairs), want


@MANY
@given(valid_configs())
def test_a_valid_config_is_read_as_flannel_reads_it(case):
    doc, want = case
    c = parse_config(doc)
    assert {k: getattr(c, k) for k in want} == want, doc


@FEW
@given(st.lists(st.tuples(spellings("SubnetLen"), st.none() | st.integers(22, 30)), min_size=1, max_size=4))
def test_of_several_matching_config_keys_the_last_non_null_wins(lens):
    c = parse_config(dumps_pairs([("Network", "10.0.0.0/16"), *lens]))
    given_lens = [v for _, v in lens if v is not None]
    assert c.subnet_len == (given_lens[-1] if given_lens else 24)


@MANY
@given(st.binary(max_size=200) | st.text(max_size=200) | _json.map(json.dumps))
def test_hostile_config_input_gives_one_line_configerror_or_a_consistent_config(raw):
    try:
        c = parse_config(raw)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        return
    assert isinstance(c, NetworkConfig) and c.network.prefixlen <= 28
    assert c.network.prefixlen + 2 <= c.subnet_len <= 30
    assert c.subnet_min in c.network and c.subnet_max in c.network


# ---- lease JSON ----------------------------------------------------------------------------------

_attrs = st.builds(
    LeaseAttrs,
    st.ip_addresses(v=4),
    st.none() | st.sampled_from(["vxlan", "host-gw", "udp"]) | st.text(min_size=1, max_size=10),
    st.none() | st.dictionaries(st.text(max_size=8), _json, max_size=4))


@MANY
@given(_attrs)
def test_lease_values_round_trip_byte_for_byte(a):
    raw = encode_attrs(a)
    assume(len(raw) <= MAX_LEASE_VALUE_BYTES)
    back = decode_attrs(raw)
    assert back == a and encode_attrs(back) == raw
    assert b"<" not in raw and b">" not in raw and b"&" not in raw      # Go's HTML-safe escaping
    assert list(json.loads(raw))[:2] == ["PublicIP", "PublicIPv6"]


_VALID_LEASE = b'{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,' \
               b'"VtepMAC":"0a:00:00:00:00:01"}}'
_mutated_lease = st.builds(lambda i, j, junk: _VALID_LEASE[:i] + junk + _VALID_LEASE[i + j:],
                           st.integers(0, len(_VALID_LEASE)), st.integers(0, 10), st.binary(max_size=10))


def _strict_json(raw):
    def refuse(name):
        raise ValueError(name)
    return json.loads(raw, parse_constant=refuse)


@MANY
@given(st.binary(max_size=120) | st.text(max_size=120) | _mutated_lease | _json.map(json.dumps)
       | st.integers(MAX_LEASE_VALUE_BYTES - 40, MAX_LEASE_VALUE_BYTES + 40).map(
           lambda n: '{"PublicIP":"192.0.2.1","Pad":"' + "x" * n + '"}'))
def test_hostile_lease_values_only_raise_leaseformaterror(raw):
    try:
        a = decode_attrs(raw)
    except LeaseFormatError as e:
        assert str(e) and "\n" not in str(e)
        return
    size = len(raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw)
    assert size <= MAX_LEASE_VALUE_BYTES
    assert isinstance(_strict_json(raw), dict)          # only what Go would decode is accepted
    assert isinstance(a.public_ip, ipaddress.IPv4Address)
    assert a.backend_data is None or isinstance(a.backend_data, dict)


def go_string(text: str) -> str:
    """How Go's encoding/json writes a string (the model, written out by hand)."""
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif ord(ch) < 0x20 or ch in "<>&\u2028\u2029":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out) + '"'


@MANY
@given(st.ip_addresses(v=4), st.text(min_size=1, max_size=20))
def test_lease_values_are_written_as_go_writes_them(ip, btype):
    want = f'{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":{go_string(btype)}}}'
    assert encode_attrs(LeaseAttrs(ip, btype)) == want.encode()


@FEW
@given(st.lists(st.tuples(spellings("PublicIP"), st.none() | st.ip_addresses(v=4).map(str)), min_size=1, max_size=4))
def test_of_several_matching_lease_keys_the_last_non_null_wins(ips):
    a = decode_attrs(dumps_pairs(ips))
    given_ips = [v for _, v in ips if v is not None]
    assert str(a.public_ip) == (given_ips[-1] if given_ips else "0.0.0.0")


# ---- subnet keys ---------------------------------------------------------------------------------

@MANY
@given(st.ip_addresses(v=4), st.integers(0, 31))
def test_subnet_keys_round_trip(ip, plen):
    n = ipaddress.IPv4Network((ip, plen), strict=False)
    assert parse_subnet_key(subnet_key(n)) == n
    assert parse_subnet_key(f"/coreos.com/network/subnets/{subnet_key(n)}") == n


_UNICODE_DIGITS = {"0": "\u0660", "1": "\u0661", "2": "\u06f2", "3": "\u0969", "4": "\uff14", "5": "\u0665",
                   "6": "\u0666", "7": "\u0667", "8": "\u0668", "9": "\u0669"}     # Arabic-Indic, ...
# mutation -> does the key stay a key? (flannel itself: see the comments)
_MUTATIONS = {
    "none": True,
    "path": True,                 # <prefix>/subnets/<name>
    "zero-length": False,         # 10.5.34.0-024: flannel's ParseUint takes it, a second spelling
    "junk-before": False,         # flannel's regex is unanchored at the start and takes it
    "padded-octet": False,        # Go's ParseIP refuses leading zeros (Go >= 1.17)
    "unicode-digit": False,       # Go's RE2 \d is ASCII only
    "junk-after": False,
    "newline": False,             # Go's $ is the end of the text; Python's also matches before \n
    "deeper-path": False,
    "host-bits": False,
    "length-32": False,           # a 5-bit length (and /32 is no subnet of hosts)
    "bad-ipv6": False,
    "ipv6-length-128": False,     # a 7-bit length
}


@st.composite
def key_cases(draw):
    """(key, whether it is a key, its subnet): a key flannel writes, changed in one way."""
    net = ipaddress.IPv4Network((draw(st.ip_addresses(v=4)), draw(st.integers(0, 31))), strict=False)
    v6 = draw(st.none() | st.sampled_from(["fc00::-64", "fc00:42:0:1::-64", "fd00::1-127"]))
    mutation = draw(st.sampled_from(sorted(_MUTATIONS)))
    ip, plen = str(net.network_address), net.prefixlen
    if mutation == "zero-length":
        plen = f"0{plen}"
    elif mutation == "padded-octet":
        octets = ip.split(".")
        k = draw(st.integers(0, 3))
        octets[k] = "0" + octets[k]
        ip = ".".join(octets)
    elif mutation == "host-bits":
        ip = str(net.network_address + 1)                  # a /31 or shorter: a host bit set
    elif mutation == "length-32":
        plen = draw(st.integers(32, 40))
    name = f"{ip}-{plen}"
    if mutation == "unicode-digit":
        k = draw(st.integers(0, len(name) - 1).filter(lambda i: name[i].isdigit()))
        name = name[:k] + _UNICODE_DIGITS[name[k]] + name[k + 1:]
    if mutation == "bad-ipv6":
        v6 = draw(st.sampled_from(["zz::-64", ":::::-64", "fc00::-", "-64"]))
    elif mutation == "ipv6-length-128":
        v6 = "fc00::-128"
    if v6:
        name += "&" + v6
    name = {"junk-before": "x" + name, "junk-after": name + "x", "newline": name + "\n",
            "path": f"/coreos.com/network/subnets/{name}",
            "deeper-path": f"/coreos.com/network/subnets/x/{name}"}.get(mutation, name)
    return name, _MUTATIONS[mutation], net


@MANY
@given(key_cases())
def test_only_flannels_own_spelling_is_a_key(case):
    """flannel's regex `(\\d+\\.\\d+.\\d+.\\d+)-(\\d+)(?:&([a-f\\d:]+)-(\\d+))?$` is unanchored at the
    start and leaves two dots unescaped; fastflannel takes only the spelling flannel writes: ASCII
    digits, no leading zeros, an aligned subnet, nothing before or after, directly under
    subnets/ (docs/flannel-compat.md §"Keys")."""
    name, ok, net = case
    try:
        got = parse_subnet_key(name)
    except LeaseFormatError as e:
        assert not ok, (name, e)
        return
    assert ok and got == net, (name, got)


@FEW
@given(st.text(alphabet=string.digits + ".-&:abcdefx/ \n\u0660", max_size=40))
def test_random_keys_parse_or_raise_leaseformaterror(key):
    try:
        n = parse_subnet_key(key)
    except LeaseFormatError:
        return
    name = key.rsplit("/", 1)[-1]
    assert subnet_key(n) == name.split("&")[0] and name.isascii()


# ---- flags ---------------------------------------------------------------------------------------

@st.composite
def go_int_spellings(draw):
    """(text, value): one int64 written in one of Go's literal forms, underscores included."""
    n = draw(st.integers(-(2**63), 2**63 - 1))
    form = draw(st.sampled_from(["dec", "hex", "HEX", "oct", "0o", "bin"]))
    mag = abs(n)
    digits = {"dec": str(mag), "hex": f"{mag:x}", "HEX": f"{mag:X}", "oct": f"{mag:o}", "0o": f"{mag:o}",
              "bin": f"{mag:b}"}[form]
    prefix = {"dec": "", "hex": "0x", "HEX": "0X", "oct": "0", "0o": "0o", "bin": "0b"}[form]
    if form == "oct" and mag == 0:
        prefix = ""                                      # "0" itself
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(digits) - 1)), max_size=3)))
    if len(digits) > 1:
        for k in reversed(cuts):
            digits = digits[:k] + "_" + digits[k:]
    if prefix and draw(st.booleans()) and form != "oct":
        prefix += "_"                                    # Go allows 0x_1F
    sign = "-" if n < 0 else draw(st.sampled_from(["", "+"]))
    return sign + prefix + digits, n


@MANY
@given(go_int_spellings())
def test_every_go_integer_spelling_reads_as_go_reads_it(case):
    text, n = case
    assert _go_int(text) == n, text


@MANY
@given(st.text(alphabet=string.digits + "_+-xXoObB abcdef\u0663\uff11\n", max_size=12) | st.text(max_size=8))
def test_int_flags_take_only_go_literals(text):
    """strconv.ParseInt(s, 0, 64): ASCII, no spaces, underscores only between digits."""
    try:
        _go_int(text)
    except ValueError:
        return
    body = text.lstrip("+-")
    assert text.isascii() and not any(c.isspace() for c in text) and len(text) - len(body) <= 1
    assert "__" not in text and not body.startswith("_") and not text.endswith("_")


_NAMES = ["etcd-prefix", "iface", "subnet-lease-renew-margin", "ip-masq", "iptables-resync", "healthz-port",
          "fastpath-batch", "fastpath-workers", "udp-anti-spoof", "v", "public-ip", "h", "help", "no-such-flag"]
_VALUES = st.sampled_from(["", "1", "0", "true", "false", "x", "-1", "70000", "0x10", "1_0", "٣", " 5", "/p", "--"]) \
    | st.text(max_size=6)


@MANY
@given(st.lists(st.tuples(st.sampled_from(["-", "--"]), st.sampled_from(_NAMES), st.sampled_from(["=", " ", ""]),
                          _VALUES), max_size=5),
       st.dictionaries(st.sampled_from(["FLANNELD_IP_MASQ", "FLANNELD_IFACE", "FLANNELD_HEALTHZ_PORT",
                                        "FLANNELD_ETCD_PREFIX"]), _VALUES, max_size=2))
def test_any_command_line_parses_or_gives_one_flag_error(parts, env):
    argv = []
    for dash, name, sep, value in parts:
        if sep == "=":
            argv.append(f"{dash}{name}={value}")
        elif sep == " ":
            argv += [f"{dash}{name}", value]
        else:
            argv.append(f"{dash}{name}")
    try:
        parse_flags(argv, env)
    except HelpRequested:
        return
    except FlagError as e:
        assert str(e) and "\n" not in str(e) and e.exit_code == 2
    except FastflannelError as e:       # any other error of ours would be wrong here
        raise AssertionError(f"{argv}: {type(e).__name__}: {e}") from None


@FEW
@given(st.lists(st.sampled_from([("etcd-prefix", st.text(string.ascii_letters + "/", min_size=1, max_size=8)),
                                 ("iptables-resync", st.integers(1, 999)),
                                 ("healthz-port", st.integers(0, 65535)),
                                 ("ip-masq", st.booleans()),
                                 ("iface", st.sampled_from(["eth0", "192.0.2.1", "br0"]))]),
                min_size=1, max_size=4, unique_by=lambda p: p[0]), st.data())
def test_the_four_go_spellings_of_a_flag_are_one(flags, data):
    pairs = [(name, data.draw(values)) for name, values in flags]

    def text(v):
        return str(v).lower() if isinstance(v, bool) else str(v)
    spelled = []
    for dash in ("-", "--"):
        spelled.append([f"{dash}{n}={text(v)}" for n, v in pairs])
        spelled.append([a for n, v in pairs for a in ((f"{dash}{n}",) if v is True else
                                                      ((f"{dash}{n}={text(v)}",) if isinstance(v, bool)
                                                       else (f"{dash}{n}", text(v))))])
    results = [parse_flags(argv, {}) for argv in spelled]
    assert all(r == results[0] for r in results), spelled
