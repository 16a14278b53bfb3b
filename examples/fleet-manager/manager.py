#!/usr/bin/env python3
"""An example fleet manager for game servers that run ec2fleetd.

Every round it lists the instances of an Auto Scaling group, reads each one's
status (GET /v1/status over HTTP) and adds up the free places of the ready
servers. Then it retires (terminates) the draining servers that are ready to
close; scales out by one below --upscale-margin free places, unless an
instance is still launching or starting; or, above --downscale-margin with two
servers ready or more, names the ready one with the fewest players to drain
(`ec2fleetd drain NAME` on the instance: the HTTP endpoint is read-only).
A server that cannot be read counts as no capacity. --apply carries out
scale-out and retire; without it nothing changes. See README.md.
"""
import argparse
import concurrent.futures
import http.client
import json
import os
import pathlib
import sys
import time
import urllib.error
import urllib.request

import boto3
from botocore.exceptions import BotoCoreError, ClientError

STATES = ("starting", "ready", "draining", "stopping", "failed")
AWS_ERRORS = (BotoCoreError, ClientError)


def url_override(text):
    instance, _, url = text.partition("=")
    if not instance or not url:
        raise argparse.ArgumentTypeError(f"{text!r} is not INSTANCE_ID=URL")
    return instance, url.rstrip("/")


def parse_args(argv=None):
    region = os.getenv("AWS_REGION") or os.getenv("AWS_DEFAULT_REGION") or "us-east-1"
    p = argparse.ArgumentParser(description="An example fleet manager for ec2fleetd game servers.")
    arg = p.add_argument
    arg("--group", required=True, metavar="NAME", help="the Auto Scaling group")
    arg("--region", default=region, help=f"the AWS region (default {region})")
    arg("--endpoint-url", metavar="URL", help="the AWS endpoint (a local emulator)")
    arg("--port", type=int, default=9358, help="the status port (default 9358)")
    arg("--address", choices=("private", "public"), default="private",
        help="which address of an instance to reach (default private)")
    arg("--token-file", metavar="FILE", help="the file whose content is the bearer token")
    arg("--url", action="append", default=[], type=url_override, metavar="INSTANCE_ID=URL",
        help="an instance's status base URL, instead of its address (repeatable)")
    arg("--upscale-margin", type=int, default=4, metavar="N", help="scale out below N free (4)")
    arg("--downscale-margin", type=int, default=18, metavar="N", help="drain above N free (18)")
    arg("--once", action="store_true", help="one round, then exit")
    arg("--every", type=float, default=10, metavar="SECONDS", help="between rounds (10)")
    arg("--json", action="store_true", help="print each round as one line of JSON")
    arg("--apply", action="store_true", help="carry out scale-out and retire")
    return p.parse_args(argv)


def group_instances(asg, group):
    """The group's desired capacity and its instances but those terminating."""
    groups = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[group])["AutoScalingGroups"]
    if not groups:
        sys.exit(f"error: no Auto Scaling group {group!r} in this region")
    ending = ("Terminating", "Terminated")
    live = [i for i in groups[0]["Instances"] if not i["LifecycleState"].startswith(ending)]
    return groups[0]["DesiredCapacity"], live


def addresses(ec2, ids, kind):
    key = "PrivateIpAddress" if kind == "private" else "PublicIpAddress"
    pages = ec2.get_paginator("describe_instances").paginate(InstanceIds=ids)
    return {i["InstanceId"]: i.get(key)
            for page in pages for r in page["Reservations"] for i in r["Instances"]}


def fetch(instance, url, token, error=None):
    """One server's entry, and its daemon's name (for `ec2fleetd drain NAME`)."""
    s = {"instance": instance, "url": url, "state": None, "online": None, "max": None,
         "free": None, "ready_to_close": False, "error": error}
    if error:
        return s, None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        request = urllib.request.Request(url + "/v1/status", headers=headers)
        with urllib.request.urlopen(request, timeout=3) as answer:
            if answer.status != 200:
                raise ValueError(f"HTTP {answer.status}")
            doc = json.load(answer)
        counts = [doc["players"][k] for k in ("online", "max", "free")]
        if doc["state"] not in STATES or any(c is not None and type(c) is not int for c in counts):
            raise ValueError("not an ec2fleetd status")
        if doc["instance"]["id"] != instance:
            raise ValueError(f"the status is that of {doc['instance']['id']}")
        s.update(state=doc["state"], online=counts[0], max=counts[1], free=counts[2],
                 ready_to_close=doc["ready_to_close"] is True)
        return s, str(doc["name"])
    except urllib.error.HTTPError as e:
        try:
            s["error"] = f"HTTP {e.code}: {json.load(e)['error']}"
        except Exception:
            s["error"] = f"HTTP {e.code}"
    except urllib.error.URLError as e:
        s["error"] = str(e.reason)
    except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as e:
        s["error"] = f"{type(e).__name__}: {e}"
    return s, None


def decide(servers, launching, upscale, downscale):
    actions = [{"action": "retire", "instance": s["instance"]}
               for s in servers if s["state"] == "draining" and s["ready_to_close"]]
    ready = [s for s in servers if s["state"] == "ready"]
    free = sum(s["free"] or 0 for s in ready)
    if free < upscale:
        if not launching:
            actions.append({"action": "scale-out", "by": 1})
    elif free > downscale and len(ready) >= 2:
        # An unknown count is never taken for an empty server: those go last.
        s = min(ready, key=lambda s: (s["online"] is None, s["online"] or 0, s["instance"]))
        actions.append({"action": "drain", "instance": s["instance"]})
    return free, actions or [{"action": "hold"}]


def apply(asg, group, desired, actions):
    retired = 0
    for a in (a for a in actions if a["action"] in ("retire", "scale-out")):
        try:
            if a["action"] == "retire":
                asg.terminate_instance_in_auto_scaling_group(
                    InstanceId=a["instance"], ShouldDecrementDesiredCapacity=True)
                retired += 1
            else:  # what a retire took off the desired capacity stays off
                asg.set_desired_capacity(AutoScalingGroupName=group, HonorCooldown=False,
                                         DesiredCapacity=desired - retired + 1)
            a["applied"] = True
        except AWS_ERRORS as e:
            a.update(applied=False, error=str(e))


def one_round(args, asg, ec2, token):
    desired, live = group_instances(asg, args.group)
    ids = sorted(i["InstanceId"] for i in live)
    overrides, errors = dict(args.url), {}
    urls = {i: overrides.get(i) for i in ids}
    if lookup := [i for i in ids if urls[i] is None]:
        try:
            found = addresses(ec2, lookup, args.address)
        except AWS_ERRORS as e:
            found, errors = {}, {i: f"DescribeInstances: {e}" for i in lookup}
        for i in lookup:
            if found.get(i):
                urls[i] = f"http://{found[i]}:{args.port}"
            else:
                errors.setdefault(i, f"no {args.address} address")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(32, len(ids)))) as pool:
        results = list(pool.map(lambda i: fetch(i, urls[i], token, errors.get(i)), ids))
    servers = [s for s, _ in results]
    names = {s["instance"]: name for s, name in results}
    # Capacity on its way: Pending in the group, starting, or not launched yet.
    coming = {i["InstanceId"] for i in live if i["LifecycleState"].startswith("Pending")}
    coming |= {s["instance"] for s in servers if s["state"] == "starting"}
    launching = len(coming) + max(0, desired - len(live))
    free, actions = decide(servers, launching, args.upscale_margin, args.downscale_margin)
    if args.apply:
        apply(asg, args.group, desired, actions)
    return {"group": args.group, "servers": servers, "free": free, "launching": launching,
            "actions": actions}, names


def show(args, r, names):
    if args.json:
        print(json.dumps(r), flush=True)
        return
    q = lambda v: "?" if v is None else v
    for s in r["servers"]:
        if s["error"]:
            print(f"{s['instance']}  error: {s['error']}")
            continue
        close = ", ready to close" if s["ready_to_close"] else ""
        print(f"{s['instance']}  {s['state']}{close}  {q(s['online'])}/{q(s['max'])} players"
              f" ({q(s['free'])} free)  {s['url']}")
    print(f"free: {r['free']} (scale out below {args.upscale_margin}, drain above "
          f"{args.downscale_margin}), launching: {r['launching']}")
    for a in r["actions"]:
        i = a.get("instance")
        line = {"retire": f"retire {i}: ready to close; terminate it, lowering the desired"
                          " capacity",
                "scale-out": "scale-out by 1: raise the desired capacity",
                "drain": f"drain {i}: run `ec2fleetd drain {names.get(i)}` on it",
                "hold": "hold"}[a["action"]]
        if "applied" in a:
            line += " (done)" if a["applied"] else f" (failed: {a['error']})"
        print(line, flush=True)


def main(argv=None):
    args = parse_args(argv)
    token = None
    if args.token_file:
        try:
            token = pathlib.Path(args.token_file).read_text().strip()
        except OSError as e:
            sys.exit(f"error: cannot read the token file: {e}")
        if not token:
            sys.exit(f"error: the token file {args.token_file} is empty")
    clients = dict(region_name=args.region, endpoint_url=args.endpoint_url)
    asg, ec2 = boto3.client("autoscaling", **clients), boto3.client("ec2", **clients)
    while True:
        try:
            show(args, *one_round(args, asg, ec2, token))
        except AWS_ERRORS as e:
            print(f"error: DescribeAutoScalingGroups: {e}", file=sys.stderr)
            if args.once:
                return 1
        if args.once:
            return 0
        time.sleep(args.every)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
