//! CRI metrics (ListMetricDescriptors, ListPodSandboxMetrics): what kubelet serves on /metrics/cadvisor when
//! it takes pod and container statistics from the runtime. They are the same figures as the stats RPCs,
//! reshaped: containers' from their cgroups inside the zone, pods' from Xen's accounting of the zone's
//! domain — no agent in the zone, and the whole VM's cost, guest kernel included.

use k8s_cri::v1 as cri;

/// A container's CPU time. CRI carries metric values as integers, so whole seconds (as cAdvisor's name says).
pub const CONTAINER_CPU: &str = "container_cpu_usage_seconds_total";
/// A container's memory in use (its cgroup's memory.current).
pub const CONTAINER_MEMORY: &str = "container_memory_usage_bytes";
/// A zone's CPU time, all vCPUs, in nanoseconds (Xen's count: the guest kernel's work is in it too).
pub const ZONE_CPU: &str = "bulkhead_zone_cpu_usage_nanoseconds_total";
/// The memory a zone's domain holds (what the pod costs the node, not what its processes use).
pub const ZONE_MEMORY: &str = "bulkhead_zone_memory_bytes";

const CONTAINER_LABELS: [&str; 3] = ["container", "pod", "namespace"];
const POD_LABELS: [&str; 2] = ["pod", "namespace"];

/// Every metric [`pod_metrics`] emits.
pub fn descriptors() -> Vec<cri::MetricDescriptor> {
    let d = |name: &str, help: &str, labels: &[&str]| cri::MetricDescriptor {
        name: name.to_owned(),
        help: help.to_owned(),
        label_keys: labels.iter().map(|l| (*l).to_owned()).collect(),
    };
    vec![
        d(CONTAINER_CPU, "Cumulative CPU time of the container's cgroup in its zone, in seconds.", &CONTAINER_LABELS),
        d(CONTAINER_MEMORY, "Memory in use by the container's cgroup in its zone, in bytes.", &CONTAINER_LABELS),
        d(
            ZONE_CPU,
            "Cumulative CPU time of the pod's zone (all vCPUs, as Xen counts it), in nanoseconds.",
            &POD_LABELS,
        ),
        d(ZONE_MEMORY, "Memory held by the pod's zone (its Xen domain), in bytes.", &POD_LABELS),
    ]
}

/// A pod's metrics from its statistics (see the module doc).
pub fn pod_metrics(stats: &cri::PodSandboxStats) -> cri::PodSandboxMetrics {
    let attrs = stats.attributes.as_ref();
    let meta = attrs.and_then(|a| a.metadata.as_ref());
    let (pod, namespace) = meta.map(|m| (m.name.clone(), m.namespace.clone())).unwrap_or_default();
    let linux = stats.linux.as_ref();
    let mut metrics = Vec::new();
    if let Some(cpu) = linux.and_then(|l| l.cpu.as_ref()) {
        let labels = vec![pod.clone(), namespace.clone()];
        push(&mut metrics, ZONE_CPU, cpu.timestamp, cri::MetricType::Counter, labels, cpu_ns(cpu));
    }
    if let Some(mem) = linux.and_then(|l| l.memory.as_ref()) {
        let labels = vec![pod.clone(), namespace.clone()];
        push(&mut metrics, ZONE_MEMORY, mem.timestamp, cri::MetricType::Gauge, labels, usage(mem));
    }
    let container_metrics = linux
        .map(|l| l.containers.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let id = c.attributes.as_ref().map(|a| a.id.clone()).unwrap_or_default();
            let name =
                c.attributes.as_ref().and_then(|a| a.metadata.as_ref()).map(|m| m.name.clone()).unwrap_or_default();
            let labels = || vec![name.clone(), pod.clone(), namespace.clone()];
            let mut metrics = Vec::new();
            if let Some(cpu) = &c.cpu {
                let seconds = cpu_ns(cpu).map(|ns| ns / 1_000_000_000);
                push(&mut metrics, CONTAINER_CPU, cpu.timestamp, cri::MetricType::Counter, labels(), seconds);
            }
            if let Some(mem) = &c.memory {
                push(&mut metrics, CONTAINER_MEMORY, mem.timestamp, cri::MetricType::Gauge, labels(), usage(mem));
            }
            cri::ContainerMetrics { container_id: id, metrics }
        })
        .collect();
    cri::PodSandboxMetrics {
        pod_sandbox_id: attrs.map(|a| a.id.clone()).unwrap_or_default(),
        metrics,
        container_metrics,
    }
}

fn cpu_ns(cpu: &cri::CpuUsage) -> Option<u64> {
    cpu.usage_core_nano_seconds.as_ref().map(|v| v.value)
}

fn usage(mem: &cri::MemoryUsage) -> Option<u64> {
    mem.usage_bytes.as_ref().map(|v| v.value)
}

/// Adds a metric when there is a value (a figure the zone did not report is left out, not sent as 0).
fn push(
    out: &mut Vec<cri::Metric>,
    name: &str,
    timestamp: i64,
    kind: cri::MetricType,
    label_values: Vec<String>,
    value: Option<u64>,
) {
    if let Some(value) = value {
        out.push(cri::Metric {
            name: name.to_owned(),
            timestamp,
            metric_type: kind.into(),
            label_values,
            value: Some(cri::UInt64Value { value }),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> cri::PodSandboxStats {
        let meta = cri::PodSandboxMetadata { name: "web".into(), namespace: "shop".into(), ..Default::default() };
        let container = cri::ContainerStats {
            attributes: Some(cri::ContainerAttributes {
                id: "c1".into(),
                metadata: Some(cri::ContainerMetadata { name: "nginx".into(), attempt: 0 }),
                ..Default::default()
            }),
            cpu: Some(cri::CpuUsage {
                timestamp: 7,
                usage_core_nano_seconds: Some(cri::UInt64Value { value: 2_500_000_000 }),
                usage_nano_cores: None,
            }),
            memory: Some(cri::MemoryUsage {
                timestamp: 7,
                usage_bytes: Some(cri::UInt64Value { value: 4096 }),
                ..Default::default()
            }),
            ..Default::default()
        };
        cri::PodSandboxStats {
            attributes: Some(cri::PodSandboxAttributes { id: "p1".into(), metadata: Some(meta), ..Default::default() }),
            linux: Some(cri::LinuxPodSandboxStats {
                cpu: Some(cri::CpuUsage {
                    timestamp: 5,
                    usage_core_nano_seconds: Some(cri::UInt64Value { value: 9_000 }),
                    usage_nano_cores: None,
                }),
                memory: None,
                containers: vec![container],
                ..Default::default()
            }),
            windows: None,
        }
    }

    #[test]
    fn pod_and_container_figures_become_labelled_metrics() {
        let m = pod_metrics(&stats());
        assert_eq!(m.pod_sandbox_id, "p1");
        // The zone's memory was not reported: left out, not zero.
        assert_eq!(m.metrics.len(), 1);
        assert_eq!(m.metrics[0].name, ZONE_CPU);
        assert_eq!(m.metrics[0].label_values, ["web", "shop"]);
        assert_eq!(m.metrics[0].value.as_ref().map(|v| v.value), Some(9_000));
        assert_eq!(m.metrics[0].metric_type(), cri::MetricType::Counter);
        let c = &m.container_metrics[0];
        assert_eq!(c.container_id, "c1");
        let got: Vec<(&str, u64, Vec<String>)> = c
            .metrics
            .iter()
            .map(|x| (x.name.as_str(), x.value.as_ref().map_or(0, |v| v.value), x.label_values.clone()))
            .collect();
        let labels = vec!["nginx".to_owned(), "web".to_owned(), "shop".to_owned()];
        assert_eq!(got, [(CONTAINER_CPU, 2, labels.clone()), (CONTAINER_MEMORY, 4096, labels)]);
    }

    #[test]
    fn every_emitted_metric_is_described_with_matching_labels() {
        let described = descriptors();
        let m = pod_metrics(&stats());
        let all = m.metrics.iter().chain(m.container_metrics.iter().flat_map(|c| c.metrics.iter()));
        for metric in all {
            let d = described.iter().find(|d| d.name == metric.name);
            assert_eq!(d.map(|d| d.label_keys.len()), Some(metric.label_values.len()), "{}", metric.name);
        }
    }
}
