"""Shims that let the Python ec2fleetd 0.0.0 (PyPI) run in the benchmark.

Loaded by Python at start-up because run-python-daemon puts this directory
on PYTHONPATH. Only about running here; nothing changes what the daemon does
or how fast it does it.

1. typing.override (Python 3.12) for Python 3.11: ec2fleetd/aws.py does
   `from typing import override` and uses it as a decorator. On 3.12 this
   does nothing. The stand-in is the identity, as typing.override is at run
   time (3.12's also sets __override__ = True on the function; so does this).

2. Block devices under a root (only when EC2FLEETD_DEVICE_ROOT is set and not
   "/"): the daemon finds an attached EBS volume by globbing the hard-coded
   /sys/block/*/device/serial for the volume ID without its dash and returns
   "/dev/<name>". The AWS double plays the kernel under a device root instead
   (ROOT/sys/block/nvmeNn1/device/serial, ROOT/dev/nvmeNn1), so the same
   function is installed with ROOT put before both paths. It returns
   ROOT/dev/<name>, so {attached_device} names the device under the root, as
   the Rust daemon's --device-root does. Same algorithm (one glob per try, read
   each serial, compare); the daemon's own 10 ms spin-wait around it is
   untouched.

3. Two IMDS directory listings the testbed's IMDS emulator does not serve
   (it answers 404 for every directory): at start the daemon reads the whole
   IMDS tree (ec2imds IMDSWrapper.all()), including
   meta-data/network/interfaces/macs/ (a listing of "MAC/") and
   meta-data/network/interfaces/macs/MAC/ (a listing of its leaves), and then
   crashes on the None that a 404 listing gives
   (EC2MetaManager.extract_ip_addresses: 'NoneType' object has no attribute
   'values'); real IMDS always serves these listings. Only when the emulator
   answers 404 for exactly these two paths, the listing is made up from what
   the emulator does serve: "MAC/" from meta-data/mac, and the leaves
   public-ipv4s, local-ipv4s, ipv6s (the emulator's per-MAC leaves; each is
   then fetched as usual, a 404 leaf reads as None, as on EC2). It costs one
   extra IMDS request (meta-data/mac) at start, nothing while polling. Inert
   once the emulator serves listings.
"""

import os
import sys
import typing

if not hasattr(typing, "override"):
    def override(method, /):
        try:
            method.__override__ = True
        except (AttributeError, TypeError):
            pass
        return method

    typing.override = override


def _install_device_root(root: str) -> None:
    import glob

    import ec2fleetd.aws as aws

    root = root.rstrip("/")

    def _find_blockdev_by_vid_linux_under_root(vid):
        left = root + "/sys/block/"
        right = "/device/serial"
        dev_serials = glob.glob(left + "*" + right)
        vid = str(vid).replace("-", "")

        for path in dev_serials:
            with open(path) as f:
                if f.read().strip() == vid:
                    return root + "/dev/" + path[len(left):][:-len(right)]

    aws._find_blockdev_by_vid_f = _find_blockdev_by_vid_linux_under_root


def _install_imds_listings() -> None:
    import ec2imds

    macs = "meta-data/network/interfaces/macs"
    leaves = "public-ipv4s\nlocal-ipv4s\nipv6s"
    orig = ec2imds.IMDSWrapper.load_scalar

    def load_scalar(self, path, tf=None):
        ret = orig(self, path, tf)
        if ret is not None or not path.startswith(macs):
            return ret
        if path == macs:
            mac = orig(self, "meta-data/mac")
            if mac:
                return (tf or (lambda x: x))(mac.strip() + "/")
        elif path.count("/") == macs.count("/") + 1:
            return (tf or (lambda x: x))(leaves)
        return ret

    ec2imds.IMDSWrapper.load_scalar = load_scalar


if os.environ.get("EC2FLEETD_PY_SHIM") == "1":
    _install_imds_listings()

_root = os.environ.get("EC2FLEETD_DEVICE_ROOT", "")
if _root and _root.rstrip("/") and os.environ.get("EC2FLEETD_PY_SHIM") == "1":
    _install_device_root(_root)
