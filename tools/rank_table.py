"""Ascend HCCL rank tables: check one, list this server's ranks, or generate one from device IPs.

    python -m tools.rank_table check rank_table.json [--server_id 10.0.0.1]
        prints one line per rank of this server: RANK_ID DEVICE_ID RANK_SIZE
    python -m tools.rank_table generate --server 10.0.0.1:192.168.100.101,192.168.100.102,... \
        [--server 10.0.0.2:...] --output rank_table.json

The table format is the one MindSpore/HCCL read (version 1.0): ``server_count``, ``server_list`` of
``{server_id, device: [{device_id, device_ip, rank_id}], host_nic_ip}``, ``status``. Rank ids must be
unique and contiguous from 0. The server is picked by ``--server_id`` (or SERVER_ID in the environment),
else by this host's addresses, else the only server of a one-server table. Errors are one line and exit 2.
"""
import argparse
import json
import os
import socket
import sys


class TableError(Exception):
    pass


def load(path):
    """Parse and validate a rank table; return it. Raises TableError naming the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            table = json.load(f)
    except FileNotFoundError:
        raise TableError(f"{path}: rank table not found") from None
    except json.JSONDecodeError as exc:
        raise TableError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(table, dict):
        raise TableError(f"{path}: expected a JSON object")
    for key in ("version", "server_count", "server_list"):
        if key not in table:
            raise TableError(f"{path}: missing key '{key}'")
    servers = table["server_list"]
    if not isinstance(servers, list) or not servers:
        raise TableError(f"{path}: 'server_list' must be a non-empty list")
    try:
        count = int(table["server_count"])
    except (TypeError, ValueError):
        raise TableError(f"{path}: 'server_count' must be a number, got {table['server_count']!r}") from None
    if count != len(servers):
        raise TableError(f"{path}: 'server_count' is {count} but 'server_list' has {len(servers)} servers")
    ranks = []
    for s, server in enumerate(servers):
        if not isinstance(server, dict) or "server_id" not in server:
            raise TableError(f"{path}: server_list[{s}] has no 'server_id'")
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            raise TableError(f"{path}: server '{server['server_id']}' has no 'device' list")
        for d, dev in enumerate(devices):
            for key in ("device_id", "device_ip", "rank_id"):
                if not isinstance(dev, dict) or key not in dev:
                    raise TableError(f"{path}: server '{server['server_id']}' device[{d}] has no '{key}'")
            try:
                ranks.append(int(dev["rank_id"]))
                int(dev["device_id"])
            except (TypeError, ValueError):
                raise TableError(f"{path}: server '{server['server_id']}' device[{d}]: rank_id and device_id must "
                                 f"be numbers") from None
    dup = sorted({r for r in ranks if ranks.count(r) > 1})
    if dup:
        raise TableError(f"{path}: rank_id {dup[0]} appears more than once")
    if sorted(ranks) != list(range(len(ranks))):
        missing = sorted(set(range(len(ranks))) - set(ranks))
        raise TableError(f"{path}: rank ids must run from 0 to {len(ranks) - 1} without gaps (missing {missing})")
    return table


def _host_addresses():
    names = {socket.gethostname(), "127.0.0.1", "localhost"}
    try:
        names |= set(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return names


def server_ranks(table, path, server_id=None):
    """[(rank_id, device_id)] of the chosen server, and the total rank count."""
    servers = table["server_list"]
    rank_size = sum(len(s["device"]) for s in servers)
    if server_id:
        chosen = [s for s in servers if str(s["server_id"]) == str(server_id)]
        if not chosen:
            raise TableError(f"{path}: no server with server_id '{server_id}' "
                             f"(the table has {', '.join(str(s['server_id']) for s in servers)})")
    elif len(servers) == 1:
        chosen = servers
    else:
        mine = _host_addresses()
        chosen = [s for s in servers if str(s["server_id"]) in mine or str(s.get("host_nic_ip")) in mine]
        if not chosen:
            raise TableError(f"{path}: {len(servers)} servers and none matches this host; set SERVER_ID")
    return [(int(d["rank_id"]), int(d["device_id"])) for d in chosen[0]["device"]], rank_size


def generate(servers):
    """servers: [(server_id, [device_ip, ...])] -> rank table dict, ranks numbered server by server."""
    rank = 0
    server_list = []
    for server_id, ips in servers:
        devices = []
        for device_id, ip in enumerate(ips):
            devices.append({"device_id": str(device_id), "device_ip": ip, "rank_id": str(rank)})
            rank += 1
        server_list.append({"server_id": server_id, "device": devices, "host_nic_ip": "reserve"})
    return {"version": "1.0", "server_count": str(len(servers)), "server_list": server_list, "status": "completed"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check")
    check.add_argument("table")
    check.add_argument("--server_id", default=os.environ.get("SERVER_ID"))
    gen = sub.add_parser("generate")
    gen.add_argument("--server", action="append", required=True, help="SERVER_ID:ip0,ip1,... (repeat per server)")
    gen.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "check":
            table = load(args.table)
            ranks, size = server_ranks(table, args.table, args.server_id)
            for rank, device in ranks:
                print(rank, device, size)
        else:
            servers = []
            for spec in args.server:
                if ":" not in spec:
                    raise TableError(f"--server {spec!r}: expected SERVER_ID:ip0,ip1,...")
                sid, ips = spec.split(":", 1)
                servers.append((sid, [ip for ip in ips.split(",") if ip]))
            with open(args.output, "w", encoding="utf-8") as f:
                json.dump(generate(servers), f, indent=2)
            load(args.output)
            print(f"wrote {args.output}: {sum(len(i) for _, i in servers)} devices on {len(servers)} server(s)")
    except TableError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
