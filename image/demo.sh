#!/bin/bash
# The demo `ci/demo` runs on the booted node image (as root, through `ci/image boot --run`): the node's
# hypervisor and services, the image baked into the node image, and a zone -- its own Xen VM with its own
# kernel -- running a workload from that image, its output and exit code coming back to the CLI.
set -euo pipefail
say() { printf '\n### %s\n' "$*"; }

say "the node: Xen and dom0"
xl info | grep -E '^(xen_version|xen_caps|nr_cpus|total_memory|free_memory)'
xl list
say "the node's services"
systemctl --no-pager --lines=0 status xenstored xenconsoled bulkheadd | grep -E '^[^ ]|Active:'
say "images (busybox:baked was baked into the node image and imported at boot)"
bulkhead image list
say "a zone: its own VM, running a workload from that image"
# PV: QEMU's software emulation cannot boot PVH guests (on hardware, leave --virt at auto).
bulkhead zone launch --image busybox:baked --name demo --memory 64 --virt pv --attach -- \
  /bin/sh -c 'echo "hello from zone $(hostname): $(uname -sr), pid $$, $(grep -c ^processor /proc/cpuinfo) vCPU"; exit 3' ||
  echo "(the workload's exit code reached the CLI: $?)"
bulkhead zone list
xl list
bulkhead zone destroy demo
say "demo done"
