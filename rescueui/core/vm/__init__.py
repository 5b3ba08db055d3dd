"""A failed server back as a virtual machine: an image restored into a VM disk, with a VM
definition fitted to the host that will run it.

* :mod:`.machine` -- what the VM gets (firmware, disk bus, NIC, vCPUs, memory) and why;
* :mod:`.job` -- the restore into the VM's disk file and its final step (disk format,
  compare, definitions);
* :mod:`.definition` -- the libvirt domain, ``.vmx`` and OVF texts;
* :mod:`.check` -- a definition checked against the disk it names.
"""
