"""The AWS test double: moto's server with the rules real AWS enforces.

moto keeps the state; this module patches the few moto methods whose real
counterparts refuse things moto accepts, gives state changes their real
duration, and wraps the server in a WSGI layer for faults, quotas and a
record of every call. It also plays the kernel: when a volume becomes
attached to an instance whose device root is registered, a Nitro-style NVMe
device appears there, backed by a file that belongs to the volume. And it
gives Auto Scaling's lifecycle hooks their effect: instances wait in
Pending:Wait and Terminating:Wait until their lifecycle actions end.

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

from moto.autoscaling import models as as_models
from moto.autoscaling import responses as as_responses
from moto.autoscaling.exceptions import ValidationError as AutoScalingValidationError
from moto.core.responses import ActionResult, EmptyResult
from moto.core.utils import utcnow
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
        reservation = _orig_run_instances(self, *args, **kwargs)
    finally:
        INTERNAL.active = False
    # EC2 Fleet tags the instances it launches with its ID (moto does not).
    fleet_id = kwargs.get("fleet_id")
    if fleet_id:
        for instance in reservation.instances:
            self.create_tags([instance.id], {"aws:ec2:fleet-id": fleet_id})
    return reservation


ec2_instances.InstanceBackend.run_instances = run_instances


def response_modify_fleet(self):
    """ModifyFleet (moto has none): a maintain fleet's new total target
    capacity. With ExcessCapacityTerminationPolicy no-termination no
    instance is terminated for it, as in EC2."""
    fleet_id = self._get_param("FleetId")
    spec = self._get_param("TargetCapacitySpecification", {})
    policy = self._get_param("ExcessCapacityTerminationPolicy")
    fleets = [f for f in self.ec2_backend.describe_fleets([fleet_id]) if f.id == fleet_id]
    if not fleets:
        raise EC2ClientError("InvalidFleetId.NotFound", f"The fleet ID '{fleet_id}' does not exist")
    fleet = fleets[0]
    if fleet.fleet_type != "maintain":
        raise EC2ClientError(
            "UnsupportedOperation", f"The fleet {fleet_id} is of type {fleet.fleet_type}: only maintain fleets are modified"
        )
    if "TotalTargetCapacity" not in spec:
        raise EC2ClientError("MissingParameter", "The request must contain the parameter TotalTargetCapacity")
    total = int(spec["TotalTargetCapacity"])
    fleet.target_capacity = total
    fleet.target_capacity_specification = dict(fleet.target_capacity_specification, TotalTargetCapacity=total)
    if policy != "no-termination":
        fleet.terminate_instances()
    return ActionResult({"Return": True})


from moto.ec2.responses import fleets as ec2_fleet_responses  # noqa: E402

ec2_fleet_responses.Fleets.modify_fleet = response_modify_fleet

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


# ------------------------------------------------ Auto Scaling lifecycle hooks
#
# moto stores lifecycle hooks and nothing more: its instances never wait,
# CompleteLifecycleAction and RecordLifecycleActionHeartbeat are not
# implemented (a 500), and GlobalTimeout is always 172800. Here an instance
# that joins a group with launch hooks (AttachInstances, or launched by the
# group) waits in Pending:Wait, and TerminateInstanceInAutoScalingGroup on an
# instance of a group with termination hooks leaves it in Terminating:Wait,
# each with one lifecycle action per hook, until the actions end: completed,
# or timed out with the hook's DefaultResult.
#
# HeartbeatTimeout below AWS's minimum of 30 s is accepted on purpose (as
# moto accepts it): tests scale time down to a few seconds.

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
TERMINATING = "autoscaling:EC2_INSTANCE_TERMINATING"
WAIT_STATE = {LAUNCHING: "Pending:Wait", TERMINATING: "Terminating:Wait"}
RESULTS = ("CONTINUE", "ABANDON")
GLOBAL_TIMEOUT_MAX = 172800  # seconds: 48 hours

# Every lifecycle action so far, in start order; OPEN holds those not ended.
# An action: {"instance_id", "group", "hook", "transition", "token",
# "started" (unix), "timeout_at" (unix), "heartbeats", "ended" (unix or
# None), "result", "how"}, and private keys (monotonic times, the backend).
ACTIONS = []
OPEN = []
# Instances a group terminated (TerminateInstanceInAutoScalingGroup, an
# abandoned launch): out of the group, `Terminated` to IMDS.
TERMINATED_BY_GROUP = set()

# AWS: the global timeout is 100 times the heartbeat timeout, at most 48 hours.
# (moto's constructor writes 172800; the setter ignores it.)
as_models.LifecycleHook.global_timeout = property(
    lambda self: min(100 * int(self.heartbeat_timeout), GLOBAL_TIMEOUT_MAX),
    lambda self, value: None,
)

# Instances waiting on a hook count toward the group's capacity until they
# move on: else moto's next capacity change would launch another instance for
# each one waiting (for a terminating one, its replacement before it left).
as_models.FakeAutoScalingGroup.active_instances = lambda self: [
    x for x in self.instance_states if x.lifecycle_state in ("InService", "Pending:Wait", "Terminating:Wait")
]


def _hooks(backend, group_name, transition):
    return [
        h for h in list(backend.lifecycle_hooks.values())
        if h.auto_scaling_group_name == group_name and h.lifecycle_transition == transition
    ]


def _membership(backend, instance_id):
    """(group, instance state) of an instance in this backend's groups, or (None, None)."""
    for group in list(backend.autoscaling_groups.values()):
        for state in group.instance_states:
            if state.instance.id == instance_id:
                return group, state
    return None, None


def _begin(backend, group, state, transition, decrement=False):
    """The instance waits on the group's hooks of this transition, if it has
    any: one action per hook. Whether it waits."""
    hooks = _hooks(backend, group.name, transition)
    if not hooks:
        return False
    state.lifecycle_state = WAIT_STATE[transition]
    started, unix = now(), time.time()
    for hook in hooks:
        heartbeat = int(hook.heartbeat_timeout)
        action = {
            "instance_id": state.instance.id,
            "group": group.name,
            "hook": hook.name,
            "transition": transition,
            "token": str(uuid.uuid4()),
            "started": unix,
            "timeout_at": unix + heartbeat,
            "heartbeats": 0,
            "ended": None,
            "result": None,
            "how": None,
            "_started": started,
            "_timeout_at": started + heartbeat,
            "_global_at": started + min(100 * heartbeat, GLOBAL_TIMEOUT_MAX),
            "_heartbeat": heartbeat,
            "_default": hook.default_result if hook.default_result in RESULTS else "ABANDON",
            "_decrement": decrement,
            "_backend": backend,
        }
        ACTIONS.append(action)
        OPEN.append(action)
    return True


def _close(action, result, how, at=None):
    action["ended"] = time.time() if at is None else at
    action["result"], action["how"] = result, how
    if action in OPEN:
        OPEN.remove(action)


def _leave(backend, group, state, decrement):
    """What moto's TerminateInstanceInAutoScalingGroup does: detach (moto then
    launches a replacement unless the capacity was decremented), terminate."""
    instance_id = state.instance.id
    TERMINATED_BY_GROUP.add(instance_id)
    backend.detach_instances(group.name, [instance_id], decrement)
    backend.ec2_backend.terminate_instances([instance_id])


def _finish(action, result, how, at=None):
    """Ends an action; when it was the instance's last one of its transition
    (or an ABANDON), the instance moves on."""
    _close(action, result, how, at)
    backend, instance_id, transition = action["_backend"], action["instance_id"], action["transition"]
    group, state = _membership(backend, instance_id)
    if state is None or group.name != action["group"] or state.lifecycle_state != WAIT_STATE[transition]:
        return
    others = [a for a in OPEN if a["instance_id"] == instance_id and a["transition"] == transition]
    if result == "ABANDON":
        # The other hooks' actions of the instance end with it, unanswered.
        for other in others:
            _close(other, None, None)
        others = []
    if others:
        return
    if transition == LAUNCHING and result == "CONTINUE":
        state.lifecycle_state = "InService"
    elif transition == LAUNCHING:
        # Abandoned: terminated, and the group replaces it.
        _leave(backend, group, state, False)
    else:
        _leave(backend, group, state, action["_decrement"])


def settle_lifecycle():
    """Ends the actions whose instance no longer waits for them (it left the
    group otherwise: DetachInstances, TerminateInstances, a scale-in, the
    group's deletion) and those past their timeout, with the hook's DefaultResult."""
    for action in list(OPEN):
        if action["ended"] is not None:
            continue
        group, state = _membership(action["_backend"], action["instance_id"])
        if state is None or group.name != action["group"] or state.lifecycle_state != WAIT_STATE[action["transition"]]:
            _close(action, None, None)
    t = now()
    for action in sorted((a for a in OPEN if a["_timeout_at"] <= t), key=lambda a: a["_timeout_at"]):
        if action["ended"] is None:
            _finish(action, action["_default"], "timeout", at=action["timeout_at"])


def reconcile_lifecycle():
    while True:
        time.sleep(0.02)
        with LOCK:
            try:
                settle_lifecycle()
            except Exception as e:  # keep the clock running whatever moto says
                print(f"aws_double: cannot settle lifecycle actions: {e!r}", flush=True)


def lifecycle_actions():
    return [{k: v for k, v in a.items() if not k.startswith("_")} for a in ACTIONS]


def autoscaling_instance(instance_id):
    """{"group", "state"} of an instance in any account and region. An
    instance a group terminated is no longer in it, but is `Terminated`
    (IMDS's target lifecycle state says so until the instance is gone)."""
    settle_lifecycle()
    for account in list(as_models.autoscaling_backends.values()):
        for backend in list(account.values()):
            group, state = _membership(backend, instance_id)
            if state is not None:
                return {"group": group.name, "state": state.lifecycle_state}
    if instance_id in TERMINATED_BY_GROUP:
        return {"group": None, "state": "Terminated"}
    return {"group": None, "state": None}


_orig_replace_instances = as_models.FakeAutoScalingGroup.replace_autoscaling_group_instances
_orig_attach_instances = as_models.AutoScalingBackend.attach_instances
_orig_delete_group = as_models.AutoScalingBackend.delete_auto_scaling_group
_orig_delete_hook = as_models.AutoScalingBackend.delete_lifecycle_hook
_orig_as_call_action = as_responses.AutoScalingResponse.call_action
_orig_response_create_group = as_responses.AutoScalingResponse.create_auto_scaling_group
_orig_response_terminate = as_responses.AutoScalingResponse.terminate_instance_in_auto_scaling_group


def replace_autoscaling_group_instances(self, count_needed, propagated_tags):
    """Instances the group launches itself wait on its launch hooks."""
    before = {id(s) for s in self.instance_states}
    _orig_replace_instances(self, count_needed, propagated_tags)
    for state in [s for s in self.instance_states if id(s) not in before]:
        _begin(self.autoscaling_backend, self, state, LAUNCHING)


def attach_instances(self, group_name, instance_ids):
    with LOCK:
        _orig_attach_instances(self, group_name, instance_ids)
        group = self.autoscaling_groups[group_name]
        for state in group.instance_states:
            if state.instance.id in instance_ids and state.lifecycle_state == "InService":
                # moto keeps the group an instance had before it was detached.
                state.instance.autoscaling_group = state.auto_scaling_group = group
                state.auto_scaling_group_name = group.name
                _begin(self, group, state, LAUNCHING)


def delete_auto_scaling_group(self, group_name):
    # AWS deletes a group's hooks with it; moto would keep them for the next
    # group of that name.
    _orig_delete_group(self, group_name)
    for key, hook in list(self.lifecycle_hooks.items()):
        if hook.auto_scaling_group_name == group_name:
            del self.lifecycle_hooks[key]


def delete_lifecycle_hook(self, as_name, name):
    # AWS: outstanding actions of the hook are completed, ABANDON for
    # launching instances, CONTINUE for terminating ones. (The hook goes
    # first, so that a replacement launched meanwhile does not wait on it.)
    _orig_delete_hook(self, as_name, name)
    for action in list(OPEN):
        if action["_backend"] is self and action["group"] == as_name and action["hook"] == name and action["ended"] is None:
            _finish(action, "ABANDON" if action["transition"] == LAUNCHING else "CONTINUE", None)


def as_call_action(self):
    # Auto Scaling calls run whole under the lock, with due timeouts settled
    # before the call is answered (and what it changed settled after).
    with LOCK:
        settle_lifecycle()
        try:
            return _orig_as_call_action(self)
        finally:
            settle_lifecycle()


def response_create_auto_scaling_group(self):
    """Hooks given with the group (LifecycleHookSpecificationList, which moto
    ignores) exist before its first instances launch, so those wait on them."""
    specs = self._get_param("LifecycleHookSpecificationList", []) or []
    backend = self.autoscaling_backend
    name = self._get_param("AutoScalingGroupName")
    if name in backend.autoscaling_groups:
        return _orig_response_create_group(self)  # moto's own answer
    for spec in specs:
        backend.create_lifecycle_hook(
            name=spec.get("LifecycleHookName"),
            as_name=name,
            transition=spec.get("LifecycleTransition"),
            timeout=int(spec["HeartbeatTimeout"]) if spec.get("HeartbeatTimeout") is not None else None,
            result=spec.get("DefaultResult"),
        )
    try:
        return _orig_response_create_group(self)
    except Exception:
        for spec in specs:
            backend.lifecycle_hooks.pop(f"{name}_{spec.get('LifecycleHookName')}", None)
        raise


def _terminate_activity(group, instance_id, decrement):
    timestamp = utcnow()
    cause = f"At {timestamp}, instance {instance_id} was taken out of service in response to a user request"
    desired = group.desired_capacity or 0
    cause += f", shrinking the capacity from {desired} to {desired - 1}." if decrement else "."
    return as_models.Activity(f"Terminating EC2 instance: {instance_id}", cause, group, start_time=timestamp)


def response_terminate_instance(self):
    instance_id = self._get_param("InstanceId")
    decrement = self._get_bool_param("ShouldDecrementDesiredCapacity", False)
    backend = self.autoscaling_backend
    group, state = _membership(backend, instance_id)
    if state is None:
        # moto: a StopIteration, answered 500.
        raise AutoScalingValidationError(
            f"Instance Id not found - No managed instance found for instance ID: {instance_id}"
        )
    if state.lifecycle_state == "Terminating:Wait":
        # Already terminating: accepted, nothing changes (the first call's
        # ShouldDecrementDesiredCapacity stands).
        return ActionResult({"Activity": _terminate_activity(group, instance_id, False)})
    activity = _terminate_activity(group, instance_id, decrement)
    if not _begin(backend, group, state, TERMINATING, decrement):
        TERMINATED_BY_GROUP.add(instance_id)
        return _orig_response_terminate(self)
    return ActionResult({"Activity": activity})


def _active_action(response):
    """The open action a CompleteLifecycleAction or a heartbeat names."""
    backend = response.autoscaling_backend
    group_name = response._get_param("AutoScalingGroupName")
    hook_name = response._get_param("LifecycleHookName")
    instance_id = response._get_param("InstanceId")
    token = response._get_param("LifecycleActionToken")
    if group_name not in backend.autoscaling_groups:
        raise AutoScalingValidationError(
            f"AutoScalingGroup name not found - AutoScalingGroup '{group_name}' not found"
        )
    if not instance_id and not token:
        raise AutoScalingValidationError("Either LifecycleActionToken or InstanceId must be specified.")
    if f"{group_name}_{hook_name}" not in backend.lifecycle_hooks:
        raise AutoScalingValidationError(f"No Lifecycle Hook found with name '{hook_name}' for group '{group_name}'")
    for action in OPEN:
        if (action["_backend"] is backend and action["group"] == group_name and action["hook"] == hook_name
                and (not token or action["token"] == token)
                and (not instance_id or action["instance_id"] == instance_id)):
            return action
    if token:
        raise AutoScalingValidationError(f"No active Lifecycle Action found with token {token}")
    raise AutoScalingValidationError(f"No active Lifecycle Action found with instance ID {instance_id}")


def response_complete_lifecycle_action(self):
    result = self._get_param("LifecycleActionResult")
    if result not in RESULTS:
        raise AutoScalingValidationError(
            f"Invalid LifecycleActionResult '{result}': it must be CONTINUE or ABANDON."
        )
    _finish(_active_action(self), result, "completed")
    return EmptyResult()


def response_record_lifecycle_action_heartbeat(self):
    action = _active_action(self)
    action["_timeout_at"] = min(now() + action["_heartbeat"], action["_global_at"])
    action["timeout_at"] = action["started"] + (action["_timeout_at"] - action["_started"])
    action["heartbeats"] += 1
    return EmptyResult()


as_models.FakeAutoScalingGroup.replace_autoscaling_group_instances = replace_autoscaling_group_instances
as_models.AutoScalingBackend.attach_instances = attach_instances
as_models.AutoScalingBackend.delete_auto_scaling_group = delete_auto_scaling_group
as_models.AutoScalingBackend.delete_lifecycle_hook = delete_lifecycle_hook
as_responses.AutoScalingResponse.call_action = as_call_action
as_responses.AutoScalingResponse.create_auto_scaling_group = response_create_auto_scaling_group
as_responses.AutoScalingResponse.terminate_instance_in_auto_scaling_group = response_terminate_instance
as_responses.AutoScalingResponse.complete_lifecycle_action = response_complete_lifecycle_action
as_responses.AutoScalingResponse.record_lifecycle_action_heartbeat = response_record_lifecycle_action_heartbeat


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
            if path.startswith("autoscaling/instances/") and method == "GET":
                return json_response(start_response, autoscaling_instance(path[len("autoscaling/instances/"):]))
            if path == "autoscaling/actions" and method == "GET":
                settle_lifecycle()
                return json_response(start_response, lifecycle_actions())
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
            # Whatever timed out is settled before any call sees the world.
            settle_lifecycle()
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
    threading.Thread(target=reconcile_lifecycle, daemon=True).start()
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
