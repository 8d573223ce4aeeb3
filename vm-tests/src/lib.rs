//! Real QEMU nodes under software emulation: the image builder (Debian minbase root
//! filesystem, GRUB with an A/B layout, the agent baked in), the VM harness (serial markers,
//! QMP, restricted networking) and the update/fallback scenarios. Filled by issue 4.
