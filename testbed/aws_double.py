"""The AWS test double: moto's server with the rules real AWS enforces.

moto keeps the state; this module patches the few moto methods whose real
counterparts refuse things moto accepts, gives state changes their real
duration, and wraps the server in a WSGI layer for faults, quotas and a
record of every call. It also plays the kernel: when a volume becomes
attached to an instance whose device root is registered, a Nitro-style NVMe
device appears there, backed by a file that belongs to the volume.

Run: python aws_double.py [--port 5000] [--host 127.0.0.1] [--data-dir DIR]
(port 0, the default, picks a free one; the first line on stdout names it)
Control interface: /_double/* (see doc/testbed.md).
"""

import argparse
import copy
import io
import ipaddress
import json
import os
import random
import shutil
import tempfile
import sys
import threading
import time
import uuid
from urllib.parse import parse_qs

from werkzeug.serving import make_server

from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import elastic_block_store as ebs
from moto.ec2.responses import elastic_block_store as ebs_responses
from moto.ec2.models import instances as ec2_instances
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.route53 import models as r53_models
from moto.route53 import responses as r53_responses
from moto.route53.exceptions import Route53ClientError

# One lock makes every rule check and the moto change it guards atomic, as
# AWS's own arbitration is: of two AttachVolume calls, one wins.
LOCK = threading.RLock()

DEFAULTS = {
    # Seconds a state change takes.
    "delays": {
        "volume_create": 0.0,  # creating -> available
        "attach": 0.0,  # attaching -> attached
        "detach": 0.0,  # detaching -> available
        "snapshot": 0.0,  # pending -> completed
        "route53_insync": 0.0,  # PENDING -> INSYNC
        "device": 0.0,  # attached -> block device present
        # A volume just created is unknown to DescribeVolumes this long
        # (InvalidVolume.NotFound by ID, absent from lists): EC2's API is
        # eventually consistent.
        "volume_visible": 0.0,
    },
    # Added to every call, in milliseconds.
    "latency_ms": 0,
    # Shares (0..1) of calls answered with a 5xx, or dropped unanswered.
    "error_rate": 0.0,
    "drop_rate": 0.0,
    # Per action, the next N calls: answered 503 ("fail_next"; or give
    # {"count": N, "status": 400, "code": "PriorRequestNotComplete"}), or
    # carried out by moto with the answer lost on the way back ("lose_answer_next").
    "fail_next": {},
    "lose_answer_next": {},
    # Per action, the next N calls wait: {"count": N, "seconds": S, "when":
    # "before"} (before moto sees the call) or "after" (moto has done the
    # work; the answer comes S seconds late).
    "delay_next": {},
    # The next N snapshots end in `error` (after the snapshot delay) with
    # this StateMessage: {"count": N, "message": "..."}.
    "snapshot_error_next": {},
    # Seconds a hosted zone stays busy after a change: another change to it
    # meanwhile is refused with PriorRequestNotComplete, as Route53 does
    # when it cannot process a change before the next one arrives.
    "route53_zone_busy": 0.0,
    # Token buckets: {"rate": per second, "burst": size}; null = no quota.
    "throttle": {"ec2_mutating": None, "ec2_other": None, "route53": None},
}
SETTINGS = copy.deepcopy(DEFAULTS)

# Real quotas, for tests that want them: {"throttle": QUOTAS}.
QUOTAS = {
    "ec2_mutating": {"rate": 5, "burst": 50},
    "ec2_other": {"rate": 20, "burst": 100},
    "route53": {"rate": 10, "burst": 50},  # per account, as AWS documents it
}

CALLS = []  # {"t", "service", "action", "params", "outcome"}
DEVICE_ROOTS = {}  # instance ID -> path
DATA_DIR = None
# (instance ID, volume ID) -> {"ready_at": monotonic time, "name": str or None}
DEVICES = {}
CHANGES = {}  # Route53 change ID -> monotonic time it is INSYNC
ZONE_BUSY = {}  # hosted zone ID -> monotonic time it takes changes again


def now():
    return time.monotonic()


def delay(name):
    return float(SETTINGS["delays"].get(name) or 0.0)


# ---------------------------------------------------------------- EBS rules

# RunInstances creates and attaches root volumes through the same methods:
# those are moto's own business, not calls to check or devices to play.
INTERNAL = threading.local()


def internal():
    return getattr(INTERNAL, "active", False)


_orig_run_instances = ec2_instances.InstanceBackend.run_instances


def run_instances(self, *args, **kwargs):
    INTERNAL.active = True
    try:
        return _orig_run_instances(self, *args, **kwargs)
    finally:
        INTERNAL.active = False


ec2_instances.InstanceBackend.run_instances = run_instances

VOLUME_SIZES = {  # GiB, inclusive
    "standard": (1, 1024),
    "gp2": (1, 16384),
    "gp3": (1, 16384),
    "io1": (4, 16384),
    "io2": (4, 65536),
    "st1": (125, 16384),
    "sc1": (125, 16384),
}

_orig_create_volume = ebs.EBSBackend.create_volume
_orig_attach_volume = ebs.EBSBackend.attach_volume
_orig_detach_volume = ebs.EBSBackend.detach_volume
_orig_create_snapshot = ebs.EBSBackend.create_snapshot
_orig_describe_volumes = ebs.EBSBackend.describe_volumes
_orig_delete_snapshot = ebs.EBSBackend.delete_snapshot
_orig_response_create_volume = ebs_responses.ElasticBlockStore.create_volume


def _volume_status(self):
    if self.__dict__.get("_available_at", 0) > now():
        return "creating"
    return "in-use" if self.attachment else "available"


def _volume_attachment_get(self):
    with LOCK:
        att = self.__dict__.get("_attachment")
        if att is not None and att.__dict__.get("_status") == "detaching" and now() >= att._detached_at:
            _finish_detach(self, att)
            att = None
        return att


def _volume_attachment_set(self, value):
    self.__dict__["_attachment"] = value


def _finish_detach(volume, att):
    att.__dict__["_status"] = "detached"
    att.instance.block_device_mapping.pop(att.device, None)
    # Only if no new attachment took its place meanwhile.
    if volume.__dict__.get("_attachment") is att:
        volume.__dict__["_attachment"] = None


def _timed_status(waiting, done):
    """A status attribute that reads `waiting` until `_ready_at`, then `done`."""

    def get(self):
        status = self.__dict__.get("_status")
        if status == waiting and now() >= self.__dict__.get("_ready_at", 0):
            status = self.__dict__["_status"] = done
        return status

    def set_(self, value):
        self.__dict__["_status"] = value

    return property(get, set_)


ebs.Volume.status = property(_volume_status)
ebs.Volume.attachment = property(_volume_attachment_get, _volume_attachment_set)
ebs.VolumeAttachment.status = _timed_status("attaching", "attached")


def create_volume(self, size, zone_name, snapshot_id=None, *args, **kwargs):
    if internal():
        return _orig_create_volume(self, size, zone_name, snapshot_id, *args, **kwargs)
    with LOCK:
        if self.get_zone_by_name(zone_name) is None:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Invalid availability zone: [{zone_name}]",
            )
        volume_type = kwargs.get("volume_type") or (args[2] if len(args) > 2 else None) or "gp2"
        if volume_type not in VOLUME_SIZES:
            raise EC2ClientError("InvalidParameterValue", f"Invalid volume type: {volume_type}")
        if size is not None:
            low, high = VOLUME_SIZES[volume_type]
            if not low <= int(size) <= high:
                raise EC2ClientError(
                    "InvalidParameterValue",
                    f"Volume of {size}GiB is out of range for {volume_type}: {low} to {high}GiB",
                )
        volume = _orig_create_volume(self, size, zone_name, snapshot_id, *args, **kwargs)
        volume.__dict__["_available_at"] = now() + delay("volume_create")
        volume.__dict__["_visible_at"] = now() + delay("volume_visible")
        return volume


def attach_volume(self, volume_id, instance_id, device_path, delete_on_termination=False):
    if internal():
        return _orig_attach_volume(self, volume_id, instance_id, device_path, delete_on_termination)
    with LOCK:
        volume = self.get_volume(volume_id)
        instance = self.get_instance(instance_id)
        if instance.state != "running":
            raise EC2ClientError(
                "IncorrectInstanceState",
                f"Instance '{instance_id}' is not 'running'.",
            )
        att = volume.attachment
        if att is not None and att.status in ("attaching", "attached"):
            raise EC2ClientError(
                "VolumeInUse",
                f"{volume_id} is already attached to an instance",
            )
        if volume.status != "available":
            raise EC2ClientError(
                "IncorrectState",
                f"vol '{volume_id}' is not 'available'.",
            )
        if volume.zone.name != instance.availability_zone:
            raise EC2ClientError(
                "InvalidVolume.ZoneMismatch",
                f"The volume '{volume_id}' is not in the same availability zone as instance '{instance_id}'",
            )
        if device_path in instance.block_device_mapping:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Invalid value '{device_path}' for unixDevice. Attachment point {device_path} is already in use",
            )
        att = _orig_attach_volume(self, volume_id, instance_id, device_path, delete_on_termination)
        ready_at = now() + delay("attach")
        if delay("attach") > 0:
            att.status = "attaching"
            att.__dict__["_ready_at"] = ready_at
        DEVICES[(instance_id, volume_id)] = {"ready_at": ready_at + delay("device"), "name": None}
        return att


def detach_volume(self, volume_id, instance_id, device_path, *args, **kwargs):
    with LOCK:
        volume = self.get_volume(volume_id)
        att = volume.attachment
        if att is None or att.status in ("detaching", "detached"):
            raise EC2ClientError(
                "IncorrectState",
                f"Volume '{volume_id}' is in the '{volume.status}' state.",
            )
        if instance_id and att.instance.id != instance_id:
            raise EC2ClientError(
                "InvalidAttachment.NotFound",
                f"Volume '{volume_id}' is not attached to instance '{instance_id}'.",
            )
        if device_path and att.device != device_path:
            raise EC2ClientError(
                "InvalidAttachment.NotFound",
                f"Volume '{volume_id}' is not attached as '{device_path}'.",
            )
        # The kernel sees the device go as soon as the detach starts.
        _unplug(att.instance.id, volume_id)
        if delay("detach") <= 0:
            return _orig_detach_volume(self, volume_id, att.instance.id, att.device)
        att.status = "detaching"
        att.__dict__["_detached_at"] = now() + delay("detach")
        return att


# ------------------------------------------------------------- snapshots
#
# moto's snapshot is a live view of its volume, always `completed` at 100 %.
# AWS's holds the volume's data and size at the CreateSnapshot call, is
# `pending` (with a Progress) until its blocks are in S3, may end in
# `error`, and cannot be restored from until `completed`.

# Pending snapshots one volume may have (st1 and sc1: one).
PENDING_LIMIT = {"st1": 1, "sc1": 1}
PENDING_LIMIT_DEFAULT = 5


def _snapshot_file(snapshot_id):
    return os.path.join(DATA_DIR, f"{snapshot_id}.img")


def _snapshot_status(self):
    """`pending` until `_ready_at`; then `completed`, or `error` when the
    test asked for it. A deletion asked for while pending lands then."""
    status = self.__dict__.get("_status", "completed")
    if status == "pending" and now() >= self.__dict__.get("_ready_at", 0):
        status = self.__dict__["_status"] = "error" if self.__dict__.get("_fails") else "completed"
        if self.__dict__.get("_delete_at_completion"):
            self.ec2_backend.snapshots.pop(self.id, None)
    return status


def _snapshot_status_set(self, value):
    self.__dict__["_status"] = value


def _snapshot_progress(self):
    status = self.status
    if status != "pending":
        return "100%" if status == "completed" else "0%"
    start, end = self.__dict__.get("_started", now()), self.__dict__.get("_ready_at", now())
    share = 0.0 if end <= start else (now() - start) / (end - start)
    return f"{min(99, int(share * 100))}%"


def _snapshot_message(self):
    return self.__dict__.get("_message") if self.status == "error" else None


ebs.Snapshot.status = property(_snapshot_status, _snapshot_status_set)
ebs.Snapshot.progress = property(_snapshot_progress)
ebs.Snapshot.state_message = property(_snapshot_message)
ebs.Snapshot.status_message = property(_snapshot_message)
# The size at the call, not the volume's later one.
ebs.Snapshot.volume_size = property(
    lambda self: self.__dict__.get("_volume_size", self.volume.size)
)


def _pending_of(backend, volume_id):
    return [
        s for s in list(backend.snapshots.values())
        if s.volume.id == volume_id and s.status == "pending"
    ]


def create_snapshot(self, volume_id, *args, **kwargs):
    if internal():
        return _orig_create_snapshot(self, volume_id, *args, **kwargs)
    with LOCK:
        volume = self.get_volume(volume_id)
        limit = PENDING_LIMIT.get(volume.volume_type, PENDING_LIMIT_DEFAULT)
        if len(_pending_of(self, volume_id)) >= limit:
            raise EC2ClientError(
                "ConcurrentSnapshotLimitExceeded",
                f"Maximum number of in-progress snapshots ({limit}) reached for volume {volume_id}.",
            )
        snapshot = _orig_create_snapshot(self, volume_id, *args, **kwargs)
        snapshot.__dict__["_volume_size"] = volume.size
        if DATA_DIR:
            shutil.copyfile(_volume_file(volume_id), _snapshot_file(snapshot.id))
        fails = SETTINGS["snapshot_error_next"]
        if fails.get("count", 0) > 0:
            fails["count"] -= 1
            snapshot.__dict__["_fails"] = True
            snapshot.__dict__["_message"] = fails.get("message", "Snapshot failed (forced by the test).")
        if delay("snapshot") > 0 or snapshot.__dict__.get("_fails"):
            snapshot.status = "pending"
            snapshot.__dict__["_started"] = now()
            snapshot.__dict__["_ready_at"] = now() + delay("snapshot")
        return snapshot


def delete_snapshot(self, snapshot_id):
    with LOCK:
        snapshot = self.snapshots.get(snapshot_id)
        if snapshot is not None and snapshot.status == "pending":
            # AWS: "the snapshot must complete before the deletion takes effect".
            if snapshot.from_ami and snapshot.from_ami in self.amis:
                return _orig_delete_snapshot(self, snapshot_id)
            snapshot.__dict__["_delete_at_completion"] = True
            return snapshot
        return _orig_delete_snapshot(self, snapshot_id)


# CreateVolume's ClientToken: (account, region, zone, token) -> (parameters, volume ID).
CLIENT_TOKENS = {}
TOKEN_PARAMETERS = ("Size", "SnapshotId", "VolumeType", "Iops", "Throughput", "Encrypted",
                    "KmsKeyId", "MultiAttachEnabled", "OutpostArn")


def response_create_volume(self):
    token = self._get_param("ClientToken")
    with LOCK:
        snapshot_id = self._get_param("SnapshotId")
        size = self._get_param("Size")
        if snapshot_id:
            snapshot = self.ec2_backend.get_snapshot(snapshot_id)
            if snapshot.status != "completed":
                raise EC2ClientError(
                    "IncorrectState",
                    f"Snapshot is in invalid state - {snapshot.status}",
                )
            if size is not None and int(size) < snapshot.volume_size:
                raise EC2ClientError(
                    "InvalidParameterValue",
                    f"Volume of size {size}GiB is smaller than snapshot '{snapshot_id}', expect size >= {snapshot.volume_size}GiB",
                )
        if not token:
            return _volume_from(self, snapshot_id)[0]
        if len(token) > 64:
            raise EC2ClientError("InvalidParameterValue", "The client token must be at most 64 characters long.")
        key = (self.ec2_backend.account_id, self.region, self._get_param("AvailabilityZone"), token)
        asked = {p: self._get_param(p) for p in TOKEN_PARAMETERS}
        known = CLIENT_TOKENS.get(key)
        if known is not None:
            if known[0] != asked:
                raise EC2ClientError(
                    "IdempotentParameterMismatch",
                    "The client token you have provided is associated with a resource that is already deleted"
                    if known[1] not in self.ec2_backend.volumes else
                    "Client token already used before with different parameters.",
                )
            from moto.core.responses import ActionResult

            volume = self.ec2_backend.volumes.get(known[1])
            if volume is None:
                raise EC2ClientError(
                    "IdempotentParameterMismatch",
                    "The client token you have provided is associated with a resource that is already deleted.",
                )
            return ActionResult(volume)
        result, volume_id = _volume_from(self, snapshot_id)
        CLIENT_TOKENS[key] = (asked, volume_id)
        return result


def _volume_from(response, snapshot_id):
    """moto's CreateVolume, then the snapshot's data into the new volume:
    (the answer, the volume ID)."""
    result = _orig_response_create_volume(response)
    volume_id = result.result.id
    if snapshot_id and DATA_DIR and os.path.exists(_snapshot_file(snapshot_id)):
        shutil.copyfile(_snapshot_file(snapshot_id), os.path.join(DATA_DIR, f"{volume_id}.img"))
    return result, volume_id


def response_describe_snapshots(self):
    from moto.core.responses import ActionResult

    owners = self._get_param("OwnerIds", [])
    max_results = self._get_param("MaxResults")
    next_token = self._get_param("NextToken")
    snapshot_ids = self._get_param("SnapshotIds", [])
    if max_results is not None:
        if snapshot_ids:
            raise EC2ClientError(
                "InvalidParameterCombination",
                "The parameter snapshotIdsSet cannot be used with the parameter maxResults",
            )
        if not 5 <= int(max_results) <= 1000:
            raise EC2ClientError(
                "InvalidParameterValue",
                f"Value ( {max_results} ) for parameter maxResults is invalid. Expecting a value between 5 and 1000.",
            )
    with LOCK:
        snapshots = self.ec2_backend.describe_snapshots(
            snapshot_ids=snapshot_ids, filters=self._filters_from_querystring()
        )
        # Reading the status lands deletions of completed snapshots.
        snapshots = [s for s in snapshots if s.status and s.id in self.ec2_backend.snapshots]
        if snapshot_ids and len(snapshots) < len(set(snapshot_ids)):
            missing = sorted(set(snapshot_ids) - {s.id for s in snapshots})
            raise EC2ClientError("InvalidSnapshot.NotFound", f"The snapshot '{missing[0]}' does not exist.")
    if owners:
        account = self.ec2_backend.account_id
        wanted = {account if o == "self" else o for o in owners}
        snapshots = [s for s in snapshots if s.owner_id in wanted or ("amazon" in wanted and s.from_ami)]
    snapshots.sort(key=lambda s: s.id)
    token = None
    if max_results is not None:
        start = int(next_token) if next_token else 0
        end = start + int(max_results)
        token = str(end) if end < len(snapshots) else None
        snapshots = snapshots[start:end]
    answer = {"Snapshots": snapshots}
    if token:
        answer["NextToken"] = token
    return ActionResult(answer)


def _visible(volume):
    return volume.__dict__.get("_visible_at", 0) <= now()


def describe_volumes(self, volume_ids=None, filters=None):
    with LOCK:
        volumes = _orig_describe_volumes(self, volume_ids, filters)
        unseen = [v.id for v in volumes if not _visible(v)]
        if volume_ids and unseen:
            raise EC2ClientError(
                "InvalidVolume.NotFound",
                f"The volume '{unseen[0]}' does not exist.",
            )
        return [v for v in volumes if _visible(v)]


ebs.EBSBackend.describe_volumes = describe_volumes
ebs.EBSBackend.create_volume = create_volume
ebs.EBSBackend.attach_volume = attach_volume
ebs.EBSBackend.detach_volume = detach_volume
ebs.EBSBackend.create_snapshot = create_snapshot
ebs.EBSBackend.delete_snapshot = delete_snapshot
ebs_responses.ElasticBlockStore.create_volume = response_create_volume
ebs_responses.ElasticBlockStore.describe_snapshots = response_describe_snapshots


# ------------------------------------------------------------ block devices


def _volume_file(volume_id):
    path = os.path.join(DATA_DIR, f"{volume_id}.img")
    if not os.path.exists(path):
        with open(path, "wb") as f:
            f.truncate(1 << 20)  # sparse: 1 MiB is plenty for tests
    return path


def _plug(instance_id, volume_id, entry):
    root = DEVICE_ROOTS.get(instance_id)
    if root is None:
        return
    block = os.path.join(root, "sys", "block")
    os.makedirs(block, exist_ok=True)
    os.makedirs(os.path.join(root, "dev"), exist_ok=True)
    n = 1
    while os.path.exists(os.path.join(block, f"nvme{n}n1")):
        n += 1
    name = f"nvme{n}n1"
    os.makedirs(os.path.join(block, name, "device"))
    with open(os.path.join(block, name, "device", "serial"), "w") as f:
        f.write(volume_id.replace("-", "") + "\n")
    os.symlink(_volume_file(volume_id), os.path.join(root, "dev", name))
    entry["name"] = name


def _unplug(instance_id, volume_id):
    entry = DEVICES.pop((instance_id, volume_id), None)
    root = DEVICE_ROOTS.get(instance_id)
    if not entry or not entry["name"] or root is None:
        return
    name = entry["name"]
    for path in (os.path.join(root, "dev", name),):
        if os.path.lexists(path):
            os.unlink(path)
    serial = os.path.join(root, "sys", "block", name, "device", "serial")
    if os.path.exists(serial):
        os.unlink(serial)
        os.rmdir(os.path.dirname(serial))
        os.rmdir(os.path.dirname(os.path.dirname(serial)))


def _attachment_of(instance_id, volume_id):
    from moto.ec2.models import ec2_backends

    for account in list(ec2_backends.values()):
        for backend in list(account.values()):
            volume = backend.volumes.get(volume_id)
            if volume is not None:
                att = volume.attachment
                if att is not None and att.instance.id == instance_id:
                    return att
    return None


def reconcile_devices():
    while True:
        time.sleep(0.01)
        with LOCK:
            for (instance_id, volume_id), entry in list(DEVICES.items()):
                if entry["name"] or now() < entry["ready_at"]:
                    continue
                att = _attachment_of(instance_id, volume_id)
                if att is not None and att.status == "attached":
                    try:
                        _plug(instance_id, volume_id, entry)
                    except OSError as e:
                        print(f"aws_double: cannot plug {volume_id} into {instance_id}: {e}", flush=True)
                        entry["ready_at"] = now() + 1


# ------------------------------------------------------------ Route53 rules

_orig_change_rrsets = r53_models.Route53Backend.change_resource_record_sets


def _current(zone, name, kind, set_id):
    for rrset in zone.rrsets:
        if rrset.name == name and rrset.type == kind and getattr(rrset, "set_identifier", None) == set_id:
            return rrset
    return None


def _check_value(kind, value, name):
    try:
        if kind == "A":
            ok = isinstance(ipaddress.ip_address(value), ipaddress.IPv4Address)
        elif kind == "AAAA":
            ok = isinstance(ipaddress.ip_address(value), ipaddress.IPv6Address)
        else:
            ok = bool(value)
    except ValueError:
        ok = False
    if not ok:
        raise Route53ClientError(
            "InvalidChangeBatch",
            f"[Invalid Resource Record: 'FATAL problem: ARRDATAIllegal{kind}Address "
            f"(Value is not a valid {kind} address) encountered with '{value}'' for {name}]",
        )


def change_resource_record_sets(self, zoneid, change_list):
    """Checks a batch as Route53 does: change by change, each against the
    zone as the changes before it in the batch left it (so DELETE then
    CREATE of one set is a compare-and-swap), the whole batch or nothing."""
    with LOCK:
        zone = self.get_hosted_zone(zoneid)
        # (name, type, set id) -> (sorted values, ttl) or None, as the batch goes.
        working = {}
        for change in change_list:
            rrset = change["ResourceRecordSet"]
            name = rrset["Name"] if rrset["Name"].endswith(".") else rrset["Name"] + "."
            kind = rrset["Type"]
            key = (name, kind, rrset.get("SetIdentifier"))
            values = [r["Value"] for r in rrset.get("ResourceRecords") or []]
            if key not in working:
                live = _current(zone, name, kind, key[2])
                working[key] = None if live is None else (sorted(live.records or []), str(live.ttl))
            current = working[key]
            if change["Action"] in ("CREATE", "UPSERT"):
                for v in values:
                    _check_value(kind, v, name)
            if change["Action"] == "CREATE" and current is not None:
                raise Route53ClientError(
                    "InvalidChangeBatch",
                    f"[Tried to create resource record set [name='{name}', type='{kind}'] but it already exists]",
                )
            if change["Action"] == "DELETE":
                if current is None:
                    raise Route53ClientError(
                        "InvalidChangeBatch",
                        f"[Tried to delete resource record set [name='{name}', type='{kind}'] but it was not found]",
                    )
                if current != (sorted(values), str(rrset.get("TTL"))):
                    raise Route53ClientError(
                        "InvalidChangeBatch",
                        f"[Tried to delete resource record set [name='{name}', type='{kind}'] "
                        "but the values provided do not match the current values]",
                    )
                working[key] = None
            else:
                working[key] = (sorted(values), str(rrset.get("TTL")))
        return _orig_change_rrsets(self, zoneid, change_list)


r53_models.Route53Backend.change_resource_record_sets = change_resource_record_sets

_orig_response_change = r53_responses.Route53.change_resource_record_sets
_orig_response_get_change = r53_responses.Route53.get_change


def _change_info(result, change_id):
    info = result.result["ChangeInfo"] if hasattr(result, "result") else None
    if info is None:
        return result
    info["Id"] = change_id
    info["Status"] = "PENDING" if CHANGES.get(change_id, 0) > now() else "INSYNC"
    return result


def response_change(self):
    result = _orig_response_change(self)
    change_id = "/change/C" + uuid.uuid4().hex[:13].upper()
    CHANGES[change_id] = now() + delay("route53_insync")
    return _change_info(result, change_id)


def response_get_change(self):
    result = _orig_response_get_change(self)
    change_id = self._get_param("Id")
    if not change_id.startswith("/change/"):
        change_id = "/change/" + change_id
    if change_id not in CHANGES:
        raise Route53ClientError("NoSuchChange", f"A change with the specified change ID does not exist: {change_id}")
    return _change_info(result, change_id)


r53_responses.Route53.change_resource_record_sets = response_change
r53_responses.Route53.get_change = response_get_change


# ------------------------------------------------- faults, quotas and calls


class Bucket:
    def __init__(self, rate, burst):
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.at = float(burst), now()

    def take(self):
        t = now()
        self.tokens = min(self.burst, self.tokens + (t - self.at) * self.rate)
        self.at = t
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


BUCKETS = {}
EC2_MUTATING = ("Attach", "Detach", "Create", "Delete", "Modify", "Run", "Terminate", "Start", "Stop", "Reboot")


def classify(environ, body):
    """(service, action, params) of an AWS call."""
    auth = environ.get("HTTP_AUTHORIZATION", "")
    service = ""
    if "Credential=" in auth:
        scope = auth.split("Credential=", 1)[1].split(",", 1)[0].split("/")
        if len(scope) >= 4:
            service = scope[3]
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    path = environ.get("PATH_INFO", "")
    method = environ.get("REQUEST_METHOD", "")
    if target:  # JSON protocols (SQS)
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        return service, target.split(".")[-1], params
    if service == "route53":
        parts = path.strip("/").split("/")[1:]  # drop the API version
        action = {
            ("POST", "hostedzone", 3, "rrset"): "ChangeResourceRecordSets",
            ("GET", "hostedzone", 3, "rrset"): "ListResourceRecordSets",
            ("POST", "hostedzone", 1, None): "CreateHostedZone",
            ("GET", "hostedzone", 1, None): "ListHostedZones",
            ("GET", "hostedzone", 2, None): "GetHostedZone",
            ("GET", "change", 2, None): "GetChange",
        }.get((method, parts[0] if parts else "", len(parts), parts[2] if len(parts) > 2 else None), f"{method} {path}")
        params = {"path": path, "query": environ.get("QUERY_STRING", ""), "body": body.decode("utf-8", "replace")}
        return service, action, params
    form = {k: v[0] if len(v) == 1 else v for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    form.update({k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()})
    action = form.pop("Action", "")
    form.pop("Version", None)
    return service, action, form


def bucket_for(service, action):
    if service == "ec2":
        return "ec2_mutating" if action.startswith(EC2_MUTATING) else "ec2_other"
    if service == "route53":
        return "route53"
    return None


def error_response(start_response, service, status, code, message):
    request_id = str(uuid.uuid4())
    if service == "ec2":
        body = (
            f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>"
            f"<RequestID>{request_id}</RequestID></Response>"
        )
        ctype = "text/xml"
    elif service in ("sqs",):
        body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": message})
        ctype = "application/x-amz-json-1.0"
    else:
        ns = ' xmlns="https://route53.amazonaws.com/doc/2013-04-01/"' if service == "route53" else ""
        kind = "Receiver" if status >= 500 else "Sender"
        body = (
            f"<ErrorResponse{ns}><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>"
            f"<RequestId>{request_id}</RequestId></ErrorResponse>"
        )
        ctype = "text/xml"
    reason = {400: "Bad Request", 500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Error")
    headers = [("Content-Type", ctype), ("x-amzn-RequestId", request_id)]
    if service == "sqs":
        headers.append(("x-amzn-query-error", f"{code};Sender"))
    start_response(f"{status} {reason}", headers)
    return [body.encode()]


def drop_connection(environ, start_response):
    """Closes the connection without an answer."""
    sock = environ.get("werkzeug.socket")
    if sock is not None:
        try:
            sock.shutdown(2)
        except OSError:
            pass
    start_response("500 Dropped", [("Content-Length", "0")])
    return []


def unavailable(start_response, service):
    """A 5xx answer in the service's own error format."""
    code = "InternalError" if service == "ec2" else "ServiceUnavailable"
    return error_response(start_response, service, 503, code, "Service is unavailable, try again.")


def json_response(start_response, value, status="200 OK"):
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(value, default=str).encode()]


def merge(into, update):
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value


class Double:
    """WSGI layer in front of moto: control interface, faults, quotas, calls."""

    def __init__(self, app):
        self.app = app

    def control(self, environ, start_response, body):
        path = environ["PATH_INFO"][len("/_double/"):]
        method = environ["REQUEST_METHOD"]
        data = json.loads(body or b"{}") if method in ("POST", "PUT") else {}
        with LOCK:
            if path == "config" and method == "GET":
                return json_response(start_response, SETTINGS)
            if path == "config" and method == "POST":
                if data.get("reset"):
                    SETTINGS.clear()
                    SETTINGS.update(copy.deepcopy(DEFAULTS))
                    BUCKETS.clear()
                if data.get("real_quotas"):
                    merge(SETTINGS, {"throttle": QUOTAS})
                    BUCKETS.clear()
                merge(SETTINGS, {k: v for k, v in data.items() if k not in ("reset", "real_quotas")})
                if "throttle" in data:
                    BUCKETS.clear()
                return json_response(start_response, SETTINGS)
            if path == "calls" and method == "GET":
                return json_response(start_response, CALLS)
            if path == "calls" and method == "DELETE":
                CALLS.clear()
                return json_response(start_response, [])
            if path == "instances" and method == "POST":
                DEVICE_ROOTS[data["instance_id"]] = data["device_root"]
                return json_response(start_response, {"registered": data["instance_id"]})
        return json_response(start_response, {"error": f"no such control: {method} /_double/{path}"}, "404 Not Found")

    def __call__(self, environ, start_response):
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        if environ.get("PATH_INFO", "").startswith("/_double/"):
            return self.control(environ, start_response, body)
        if environ.get("PATH_INFO", "").startswith("/moto-api"):
            return self.app(environ, start_response)
        service, action, params = classify(environ, body)
        call = {"t": time.time(), "service": service, "action": action, "params": params, "outcome": "answered"}
        with LOCK:
            CALLS.append(call)
            latency = SETTINGS["latency_ms"] / 1000.0
            error_rate, drop_rate = SETTINGS["error_rate"], SETTINGS["drop_rate"]
            name = bucket_for(service, action)
            shape = SETTINGS["throttle"].get(name) if name else None
            throttled = False
            if shape:
                bucket = BUCKETS.get(name)
                if bucket is None:
                    bucket = BUCKETS[name] = Bucket(shape["rate"], shape["burst"])
                throttled = not bucket.take()
        if latency > 0:
            time.sleep(latency)
        if drop_rate and random.random() < drop_rate:
            call["outcome"] = "dropped"
            return drop_connection(environ, start_response)
        if throttled:
            call["outcome"] = "throttled"
            if service == "ec2":
                return error_response(start_response, service, 503, "RequestLimitExceeded", "Request limit exceeded.")
            return error_response(start_response, service, 400, "Throttling", "Rate exceeded")
        with LOCK:
            forced = SETTINGS["fail_next"].get(action, 0)
            if isinstance(forced, dict):
                forced_failure = forced.get("count", 0) > 0
                if forced_failure:
                    forced["count"] -= 1
                    forced_error = (forced.get("status", 503), forced.get("code", "ServiceUnavailable"))
            else:
                forced_failure = forced > 0
                forced_error = None
                if forced_failure:
                    SETTINGS["fail_next"][action] -= 1
            zone_busy = False
            if action == "ChangeResourceRecordSets" and SETTINGS["route53_zone_busy"] > 0:
                zone = params["path"].strip("/").split("/")[2]
                zone_busy = ZONE_BUSY.get(zone, 0) > now()
                if not zone_busy:
                    ZONE_BUSY[zone] = now() + SETTINGS["route53_zone_busy"]
            lose_answer = SETTINGS["lose_answer_next"].get(action, 0) > 0
            if lose_answer:
                SETTINGS["lose_answer_next"][action] -= 1
            delayed = SETTINGS["delay_next"].get(action)
            wait = None
            if isinstance(delayed, dict) and delayed.get("count", 0) > 0:
                delayed["count"] -= 1
                wait = (float(delayed.get("seconds", 1.0)), delayed.get("when", "before"))
        if forced_failure and forced_error:
            call["outcome"] = forced_error[1]
            return error_response(start_response, service, forced_error[0], forced_error[1], "Forced by the test.")
        if forced_failure:
            call["outcome"] = "5xx"
            return unavailable(start_response, service)
        if zone_busy:
            call["outcome"] = "PriorRequestNotComplete"
            return error_response(
                start_response, service, 400, "PriorRequestNotComplete",
                "The request was rejected because Route 53 was still processing a prior request.",
            )
        if lose_answer:
            # moto does the work; the client never hears of it.
            call["outcome"] = "answer lost"
            for _ in self.app(environ, lambda *a, **k: None):
                pass
            return drop_connection(environ, start_response)
        if error_rate and random.random() < error_rate:
            call["outcome"] = "5xx"
            return unavailable(start_response, service)
        if wait and wait[1] == "after":
            # moto does the work now; the answer leaves late (if the client
            # is still there to hear it).
            call["delayed"] = wait[0]
            answer = {}

            def keep(status, headers, exc_info=None):
                answer["status"] = (status, headers)

            body = b"".join(self.app(environ, keep))
            time.sleep(wait[0])
            start_response(*answer["status"])
            return [body]
        if wait:
            call["delayed"] = wait[0]
            time.sleep(wait[0])
        return self.app(environ, start_response)


def main():
    global DATA_DIR
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--data-dir", help="where volume contents live (default: a new temporary folder)")
    args = parser.parse_args()
    DATA_DIR = args.data_dir or tempfile.mkdtemp(prefix="aws-double-")
    os.makedirs(DATA_DIR, exist_ok=True)
    threading.Thread(target=reconcile_devices, daemon=True).start()
    app = Double(DomainDispatcherApplication(create_backend_app))
    # Port 0 lets the kernel pick a free port; the first line on stdout says
    # which, so that parallel tests never race for one.
    server = make_server(args.host, args.port, app, threaded=True)
    port = server.socket.getsockname()[1]
    print(f"listening on {args.host}:{port}", flush=True)
    print(f"aws_double: moto with real rules on http://{args.host}:{port}, volumes in {DATA_DIR}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
