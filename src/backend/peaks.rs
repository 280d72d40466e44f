//! Spec-sheet peaks of known GPUs, for MFU. Kept out of the CUDA module so the table is
//! tested on machines without one.

/// Dense (not sparse) bf16 tensor-core peaks from the vendors' spec sheets, in TFLOP/s.
pub fn dense_bf16_peak_tflops(device_name: &str) -> Option<f64> {
    let n = device_name.to_ascii_uppercase();
    let table: &[(&str, f64)] = &[
        ("H200", 989.0),
        ("H100 PCIE", 756.0),
        ("H100 NVL", 835.0),
        ("H100", 989.0), // SXM
        ("H800", 989.0),
        ("GH200", 989.0),
        ("B200", 2250.0),
        ("A100", 312.0),
        ("A800", 312.0),
        ("L40S", 362.0),
        ("L4", 121.0),
        ("A10G", 70.0),
        ("RTX 4090", 165.0),
    ];
    table.iter().find(|(k, _)| n.contains(k)).map(|&(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::dense_bf16_peak_tflops as peak;

    #[test]
    fn names_as_the_driver_reports_them() {
        assert_eq!(peak("NVIDIA H100 80GB HBM3"), Some(989.0));
        assert_eq!(peak("NVIDIA H100 PCIe"), Some(756.0));
        assert_eq!(peak("NVIDIA H200"), Some(989.0));
        assert_eq!(peak("NVIDIA A100-SXM4-80GB"), Some(312.0));
        assert_eq!(peak("NVIDIA L40S"), Some(362.0));
        assert_eq!(peak("NVIDIA L4"), Some(121.0));
        assert_eq!(peak("Some Future GPU"), None);
    }
}
