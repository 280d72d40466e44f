//! build/launchers.rs, the generator of the typed kernel launchers (see its module doc): every
//! kernel file parses, every `CADA_KERNEL` gets exactly one launcher with its parameters, and
//! what it cannot type, or a struct defined two ways, is an error naming the file.
//! Runs without the `cuda` feature: the generator is plain text processing.

#[path = "../build/launchers.rs"]
#[allow(dead_code)]
mod launchers;

/// kernels/*.cu and *.cuh, as build.rs passes them.
fn kernel_sources() -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir("kernels")
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu" || e == "cuh"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| {
            let name = format!("kernels/{}", p.file_name().unwrap().to_string_lossy());
            (name, std::fs::read_to_string(p).unwrap())
        })
        .collect()
}

#[test]
fn every_kernel_gets_one_typed_launcher() {
    let sources = kernel_sources();
    let rust = launchers::generate(&sources).expect("the kernel files parse");
    // every non-macro CADA_KERNEL line names a launcher of that name
    let mut plain = 0;
    for (file, src) in &sources {
        for line in src.lines().filter(|l| l.starts_with("CADA_KERNEL void ")) {
            let name = line["CADA_KERNEL void ".len()..]
                .split('(')
                .next()
                .unwrap()
                .trim();
            plain += 1;
            assert!(
                rust.contains(&format!("pub(super) fn {name}(\n")),
                "{file}: no launcher for `{name}`"
            );
        }
    }
    let launchers = rust.matches("(\n    cuda: &Cuda,\n").count();
    // the three macro-built mma kernels and the three wgmma ones are one launcher each (with
    // a `variant`)
    assert_eq!(
        launchers,
        plain + 6,
        "launchers: {launchers}, plain kernels: {plain}"
    );
    for k in [
        "attention_mma_forward_hd",
        "attention_mma_backward_dq_hd",
        "attention_mma_backward_dkv_hd",
        "attention_wgmma_forward_hd",
        "attention_wgmma_backward_dq_hd",
        "attention_wgmma_backward_dkv_hd",
    ] {
        assert!(rust.contains(&format!(
            "pub(super) fn {k}(\n    cuda: &Cuda,\n    variant: usize,"
        )));
        assert!(
            rust.contains(&format!("64 => \"{k}64\""))
                && rust.contains(&format!("128 => \"{k}128\""))
        );
    }
    // a signature read parameter for parameter
    assert!(rust.contains(
        "pub(super) fn rmsnorm_forward(\n    cuda: &Cuda,\n    cfg: LaunchConfig,\n    \
         out: &mut impl DevicePtrMut<f32>,\n    rstd: &mut impl DevicePtrMut<f32>,\n    \
         x: &impl DevicePtr<f32>,\n    w: &impl DevicePtr<f32>,\n    dim: &i32,\n    eps: &f32,\n) -> Result<()>"
    ));
    // the by-value structs, field for field, and none of the kernels' internal ones
    assert!(rust.contains(
        "pub(crate) struct GrpoParams {\n    pub epsilon_low: f32,\n    pub epsilon_high: f32,\n    \
         pub beta: f32,\n    pub use_ref: i32,\n    pub loss_type: i32,\n    pub max_completion_len: i32,\n    \
         pub sequence_level: i32,\n    pub delta: f32,\n}"
    ));
    assert!(
        rust.contains("pub(crate) struct AttnDims {")
            && rust.contains("pub(crate) struct DecodeDims {")
    );
    assert!(
        !rust.contains("struct TokenTerms")
            && !rust.contains("struct SurrogateTerms")
            && !rust.contains("struct QkRow")
            && !rust.contains("struct Kept")
    );
}

fn one(src: &str) -> Result<String, String> {
    launchers::generate(&[("kernels/x.cu".to_string(), src.to_string())])
}

#[test]
fn comments_restrict_spacing_and_bounds_are_read() {
    let rust = one(
        "// CADA_KERNEL void commented_out(int a)\n\
         CADA_KERNEL void __launch_bounds__(128, 2)\n    k(const float *__restrict__ x, /* the output */ float* y,\n      \
         int64_t n, unsigned int seed, const __nv_bfloat16* h) {}\n",
    )
    .unwrap();
    assert!(!rust.contains("commented_out"));
    assert!(rust.contains(
        "    x: &impl DevicePtr<f32>,\n    y: &mut impl DevicePtrMut<f32>,\n    n: &i64,\n    \
         seed: &u32,\n    h: &impl DevicePtr<bf16>,\n"
    ));
    // pointers are pushed as their device addresses, scalars as themselves, in order
    let pushes: Vec<&str> = rust
        .lines()
        .filter(|l| l.contains("builder.arg("))
        .collect();
    assert_eq!(
        pushes,
        [
            "    builder.arg(&x);",
            "    builder.arg(&y);",
            "    builder.arg(n);",
            "    builder.arg(seed);",
            "    builder.arg(&h);"
        ]
    );
}

#[test]
fn what_it_cannot_type_is_an_error_naming_the_file() {
    let e = one("CADA_KERNEL void k(float* x, half* y) {}").unwrap_err();
    assert!(
        e.contains("kernels/x.cu") && e.contains("`k`") && e.contains("half* y"),
        "{e}"
    );
    let e = one("CADA_KERNEL void k(float* x, size_t n) {}").unwrap_err();
    assert!(e.contains("size_t n"), "{e}");
    let e = one("CADA_KERNEL void k(float* cfg) {}").unwrap_err();
    assert!(e.contains("may not be called `cfg`"), "{e}");
    let e = one("#define M(HD) CADA_KERNEL void k_hd##HD(float* x) {}\n").unwrap_err();
    assert!(e.contains("never instantiated"), "{e}");
}

#[test]
fn a_struct_defined_two_ways_is_an_error() {
    let a = (
        "kernels/a.cu".to_string(),
        "struct D { int b, t; };\nCADA_KERNEL void k(D d) {}".to_string(),
    );
    let b = (
        "kernels/b.cu".to_string(),
        "struct D { int t, b; };\nCADA_KERNEL void j(D d) {}".to_string(),
    );
    let same = (
        "kernels/c.cu".to_string(),
        "struct D {\n    int b;\n    int t;\n};".to_string(),
    );
    let e = launchers::generate(&[a.clone(), b]).unwrap_err();
    assert!(
        e.contains("`D`") && e.contains("kernels/a.cu") && e.contains("kernels/b.cu"),
        "{e}"
    );
    let rust = launchers::generate(&[a, same]).unwrap();
    assert!(rust.contains("pub(crate) struct D {\n    pub b: i32,\n    pub t: i32,\n}"));
    let e = one("struct P { bool on; };\nCADA_KERNEL void k(P p) {}").unwrap_err();
    assert!(e.contains("bool on"), "{e}");
}

#[test]
fn integer_defines_are_exported_and_must_agree() {
    let rust = launchers::generate(&kernel_sources()).unwrap();
    for line in [
        "pub(crate) const CADA_BLOCK: i64 = 256;",
        "pub(crate) const SAMPLE_THREADS: i64 = 256;",
        "pub(crate) const GRPO_LOSS_DR_GRPO: i64 = 2;",
    ] {
        assert!(rust.contains(line), "missing {line}");
    }
    let a = (
        "kernels/a.cu".to_string(),
        "#define ROWS 8  // one warp each\n#define F(x) (x)\n#define NAME foo\n".to_string(),
    );
    let b = ("kernels/b.cu".to_string(), "#define ROWS 16\n".to_string());
    let rust = launchers::generate(std::slice::from_ref(&a)).unwrap();
    assert!(rust.contains("pub(crate) const ROWS: i64 = 8;"));
    assert!(!rust.contains("const F") && !rust.contains("const NAME"));
    let e = launchers::generate(&[a, b]).unwrap_err();
    assert!(
        e.contains("ROWS") && e.contains("kernels/a.cu") && e.contains("kernels/b.cu"),
        "{e}"
    );
}

#[test]
fn the_module_kernel_lists_come_from_the_sources() {
    let rust = launchers::generate(&kernel_sources()).unwrap();
    // the hand-kept list this replaced had missed logprob_chunk_grad_bf16 (a launch would
    // have failed with "kernel not loaded" on the first bf16-mode backward)
    assert!(rust.contains(
        "\"fused_logprob\" => &[\"logprob_state_init\", \"logprob_chunk_update\", \
         \"logprob_finish\", \"logprob_chunk_grad\", \"logprob_chunk_grad_bf16\"],"
    ));
    assert!(rust.contains(
        "\"attention_mma\" => &[\"attention_mma_forward_hd64\", \"attention_mma_forward_hd128\", \
         \"attention_mma_backward_dq_hd64\", \"attention_mma_backward_dq_hd128\", \
         \"attention_mma_backward_dkv_hd64\", \"attention_mma_backward_dkv_hd128\"],"
    ));
    // every launcher's kernel is in its module's list
    for (file, src) in kernel_sources() {
        let module = file.trim_start_matches("kernels/").trim_end_matches(".cu");
        for line in src.lines().filter(|l| l.starts_with("CADA_KERNEL void ")) {
            let name = line["CADA_KERNEL void ".len()..]
                .split('(')
                .next()
                .unwrap()
                .trim();
            let entry = rust
                .lines()
                .find(|l| l.trim_start().starts_with(&format!("{module:?} => &[")))
                .unwrap_or_else(|| panic!("no list for {module}"));
            assert!(
                entry.contains(&format!("{name:?}")),
                "{module}: {name} not listed"
            );
        }
    }
}

#[test]
fn kernels_it_cannot_place_are_errors_not_launch_failures() {
    // under #if: nvcc may not compile it, and Cuda::new would fail to load it on a GPU
    let e = one("#ifdef X\nCADA_KERNEL void k(float* x) {}\n#endif\n").unwrap_err();
    assert!(e.contains("`k`") && e.contains("#if"), "{e}");
    // a kernel after a closed block is fine
    assert!(one("#ifndef X\n#define X 1\n#endif\nCADA_KERNEL void k(float* x) {}\n").is_ok());
    // a kernel in a header belongs to no module
    let h = (
        "kernels/common.cuh".to_string(),
        "CADA_KERNEL void k(float* x) {}".to_string(),
    );
    let e = launchers::generate(&[h]).unwrap_err();
    assert!(
        e.contains("kernels/common.cuh") && e.contains("header"),
        "{e}"
    );
    // every instantiation on a line counts; one inside a longer name does not
    let rust = one("#define M(HD) CADA_KERNEL void k_hd##HD(float* x) {}\nM(64) M(128)\nXM(32)\n")
        .unwrap();
    assert!(rust.contains("64 => \"k_hd64\"") && rust.contains("128 => \"k_hd128\""));
    assert!(!rust.contains("k_hd32"));
    // octal-looking values, and names the launcher uses itself
    let e = one("#define ROWS 010\n").unwrap_err();
    assert!(e.contains("octal"), "{e}");
    let e = one("CADA_KERNEL void k(float* f) {}").unwrap_err();
    assert!(e.contains("may not be called `f`"), "{e}");
    // a `//` or `/*` inside a string literal is not a comment
    let rust = one("const char* s = \"a /* b\";\nCADA_KERNEL void k(float* x) {}\n").unwrap();
    assert!(rust.contains("pub(super) fn k("));
}
