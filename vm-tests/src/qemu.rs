//! One QEMU node: a qcow2 overlay over the base disk (all boot state lives on the disk), a QEMU
//! process per boot (`-no-reboot`: a guest reboot ends the process and the harness starts the
//! next one, which is 2-3x faster than an in-place reset under TCG), the serial console in a
//! file scanned for markers, QMP for a hard power-off, fw_cfg for the server URL and machine id,
//! and user networking restricted to forwards: the guest's `10.0.2.100:80` reaches the update
//! server on the host's loopback; a kubelet node's `10.0.2.101:443` reaches kube-apiserver and
//! `10.0.2.102:5000` the image registry; nothing else.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// A test node.
pub struct Node {
    /// The node's directory (overlay, serial log, QMP socket).
    pub dir: PathBuf,
    /// The machine id the node reports.
    pub machine_id: String,
    server_port: u16,
    child: Option<Child>,
    /// Boots so far (QEMU processes started).
    pub boots: u32,
    /// Set for fleet nodes: how the guest's kubelet joins the cluster.
    cluster: Option<Kubelet>,
    /// Guest memory, MiB.
    memory_mib: u32,
    /// Virtual CPUs (TCG runs one host thread per vCPU).
    cpus: u32,
    seen: u64,
    started: Instant,
}

impl Node {
    /// A node whose disk is a fresh overlay over `base`, reaching the server at `server_port`.
    pub fn create(dir: &Path, base: &Path, server_port: u16, machine_id: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let overlay = dir.join("disk.qcow2");
        let _ = std::fs::remove_file(&overlay);
        let out = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(base)
            .arg(&overlay)
            .output()
            .context("qemu-img")?;
        ensure!(
            out.status.success(),
            "qemu-img create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(dir.join("serial.log"), b"")?;
        Ok(Self {
            dir: dir.to_path_buf(),
            machine_id: machine_id.to_owned(),
            server_port,
            child: None,
            boots: 0,
            cluster: None,
            memory_mib: 768,
            cpus: 2,
            seen: 0,
            started: Instant::now(),
        })
    }

    /// Makes this a Kubernetes node: the guest's containerd and kubelet start (vm-setup sees
    /// the kubelet's kubeconfig in fw_cfg) and join the API server on the host. One vCPU: a
    /// fleet of TCG guests shares the host's cores; 1 GiB: kubelet, containerd, the engine and the
    /// agent's pod.
    pub fn with_kubelet(mut self, kubelet: Kubelet) -> Self {
        self.cluster = Some(kubelet);
        self.cpus = 1;
        self.memory_mib = 1024;
        self
    }

    /// The Node name of a cluster node.
    pub fn node_name(&self) -> Option<&str> {
        self.cluster.as_ref().map(|k| k.node_name.as_str())
    }

    fn serial(&self) -> PathBuf {
        self.dir.join("serial.log")
    }

    fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }

    /// Starts QEMU (one boot).
    pub fn power_on(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "the node is already running");
        let _ = std::fs::remove_file(self.qmp());
        let serial = self.serial();
        let child = Command::new("qemu-system-x86_64")
            .args(["-accel", "tcg", "-cpu", "max"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()])
            .args(["-nographic", "-no-reboot", "-monitor", "none"])
            .arg("-pidfile")
            .arg(self.dir.join(PID_FILE))
            .arg("-drive")
            .arg(format!(
                "file={},format=qcow2,if=virtio,cache=unsafe",
                self.dir.join("disk.qcow2").display()
            ))
            .arg("-chardev")
            .arg(format!("file,id=s0,path={},append=on", serial.display()))
            .args(["-serial", "chardev:s0"])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", self.qmp().display()))
            .arg("-fw_cfg")
            .arg("name=opt/slipway/server,string=http://10.0.2.100/")
            .arg("-fw_cfg")
            .arg(format!("name=opt/slipway/machine-id,string={}", self.machine_id))
            .args(self.cluster.iter().flat_map(Kubelet::fw_cfg))
            // SLIPWAY_VM_DIAG=SECONDS: the guest prints its units' state, mounts and the
            // runtime's journal on the serial console that long after boot (debugging aid).
            .args(std::env::var("SLIPWAY_VM_DIAG").ok().into_iter().flat_map(|secs| {
                ["-fw_cfg".to_owned(), format!("name=opt/slipway/diag,string={secs}")]
            }))
            .arg("-netdev")
            .arg(format!(
                "user,id=n0,ipv6=off,restrict=on,guestfwd=tcp:10.0.2.100:80-cmd:socat - TCP:127.0.0.1:{}{}",
                self.server_port,
                self.cluster.as_ref().map_or(String::new(), Kubelet::forwards)
            ))
            .args(["-device", "virtio-net-pci,netdev=n0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join(format!("qemu-{}.log", self.boots)))?)
            .spawn()
            .context("starting qemu-system-x86_64")?;
        self.child = Some(child);
        self.boots += 1;
        Ok(())
    }

    /// Whether QEMU is running.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => match c.try_wait() {
                Ok(None) => true,
                _ => {
                    self.child = None;
                    false
                }
            },
            None => false,
        }
    }

    /// Waits for a serial line containing `needle`, restarting QEMU whenever the guest reboots
    /// (the restart loop), and returns the line. Lines before the previous match are not
    /// searched again.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[needle], timeout).map(|(_, l)| l)
    }

    /// As [`Self::wait_for`], for the first of several needles; returns its index too.
    pub fn wait_for_any(&mut self, needles: &[&str], timeout: Duration) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = self.scan(needles)? {
                return Ok(found);
            }
            if !self.running() {
                self.power_on()?;
            }
            if Instant::now() > deadline {
                let tail = self.tail(100);
                bail!(
                    "timed out after {timeout:?} waiting for {needles:?} on {}'s serial console; last lines:\n{tail}",
                    self.machine_id
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Every complete serial line since the last call (or match), restarting QEMU first if the
    /// guest rebooted. For harnesses that watch several nodes at once.
    pub fn poll(&mut self) -> Result<Vec<String>> {
        if !self.running() {
            self.power_on()?;
        }
        let mut out = Vec::new();
        self.read_lines(|line| {
            out.push(line.trim_end().to_owned());
            false
        })?;
        Ok(out)
    }

    fn scan(&mut self, needles: &[&str]) -> Result<Option<(usize, String)>> {
        let mut found = None;
        self.read_lines(|line| {
            found = needles
                .iter()
                .position(|n| line.contains(n))
                .map(|i| (i, line.trim_end().to_owned()));
            found.is_some()
        })?;
        Ok(found)
    }

    /// Hands each complete serial line after the last one read to `stop`, moving past it,
    /// until `stop` returns true or no complete line is left (a partial line is read again
    /// next time).
    fn read_lines(&mut self, mut stop: impl FnMut(&str) -> bool) -> Result<()> {
        let mut f = std::fs::File::open(self.serial())?;
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(self.seen))?;
        let mut reader = BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Ok(());
            }
            self.seen += n as u64;
            if stop(&String::from_utf8_lossy(&line)) {
                return Ok(());
            }
        }
    }

    /// The last `n` lines of the serial console (all boots).
    pub fn tail(&self, n: usize) -> String {
        tail_file(&self.serial(), n)
    }

    /// Hard power-off through QMP (`quit`), like pulling the plug.
    pub fn power_off(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let sent = (|| -> Result<()> {
            let mut s = UnixStream::connect(self.qmp())?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut r = BufReader::new(s.try_clone()?);
            let mut greeting = String::new();
            r.read_line(&mut greeting)?;
            s.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
            let mut ok = String::new();
            r.read_line(&mut ok)?;
            s.write_all(b"{\"execute\":\"quit\"}\n")?;
            Ok(())
        })();
        if sent.is_err() {
            let _ = child.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Seconds since the node was created.
    pub fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// The file in a node's directory where QEMU writes its process id (the harness's watcher thread
/// owns the `Node`; a test reads the file).
pub const PID_FILE: &str = "qemu.pid";

/// How a node's kubelet joins the cluster.
#[derive(Debug, Clone)]
pub struct Kubelet {
    /// kube-apiserver's port on the host's loopback (the guest's `10.0.2.101:443`).
    pub api_port: u16,
    /// The image registry's port on the host's loopback (the guest's `10.0.2.102:5000`).
    pub registry_port: u16,
    /// The Node's name.
    pub node_name: String,
    /// The kubelet's kubeconfig (server `https://10.0.2.101`, a client certificate for
    /// `system:node:NAME`).
    pub kubeconfig: PathBuf,
    /// `--node-labels` (`k=v,k=v`).
    pub labels: String,
    /// This node's pod subnet (the CNI bridge's range).
    pub pod_cidr: String,
}

impl Kubelet {
    fn fw_cfg(&self) -> Vec<String> {
        vec![
            "-fw_cfg".to_owned(),
            format!(
                "name=opt/slipway/kubelet-kubeconfig,file={}",
                self.kubeconfig.display()
            ),
            "-fw_cfg".to_owned(),
            format!("name=opt/slipway/node-name,string={}", self.node_name),
            "-fw_cfg".to_owned(),
            format!("name=opt/slipway/node-labels,string={}", self.labels),
            "-fw_cfg".to_owned(),
            format!("name=opt/slipway/pod-cidr,string={}", self.pod_cidr),
        ]
    }

    fn forwards(&self) -> String {
        format!(
            ",guestfwd=tcp:10.0.2.101:443-cmd:socat - TCP:127.0.0.1:{},guestfwd=tcp:10.0.2.102:5000-cmd:socat - TCP:127.0.0.1:{}",
            self.api_port, self.registry_port
        )
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The last `n` lines of a text file (empty if it cannot be read).
pub fn tail_file(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
