//! Generates `OUT_DIR/kernel_launchers.rs` from the kernels' own source: one typed Rust function
//! per `CADA_KERNEL` in kernels/*.cu, its parameters read from the kernel's signature, and a
//! `#[repr(C)]` Rust twin of every struct a kernel takes by value, and the kernels' integer
//! `#define`s (`kernels::defines`, the geometry they are written for).
//!
//! Why: a launch hands the driver raw argument bytes, so an argument out of order, missing, or
//! of the wrong width (an i64 where the kernel takes `int`) is silent garbage on the GPU, and no
//! GPU runs in CI. With the parameter lists generated, such a launch does not compile: pointers
//! are typed by element and by `const` (`&impl DevicePtr<f32>` for `const float*`,
//! `&mut impl DevicePtrMut<f32>` for `float*`), scalars by width, structs by name, and a struct
//! defined in two kernel files must be defined the same way in both.
//!
//! The parser reads the subset of C++ the kernel files use for signatures: `CADA_KERNEL void
//! [__launch_bounds__(…)] name(type name, …)`, with names built by a macro
//! (`foo_hd##HDP` inside `#define M(HDP)`, instantiated by `M(64)` lines) becoming one function
//! that takes the variant. What it does not understand fails the build, naming the file: an
//! unknown parameter type, a kernel under `#if` (nvcc may not compile it, and `Cuda::new` would
//! then fail to load it), a kernel in a header, a struct or `#define` defined two ways, an
//! octal-looking `#define`, a macro never instantiated.

use std::collections::BTreeMap;
use std::fmt::Write as _;

struct Param {
    c_type: String,
    name: String,
}

struct Kernel {
    file: String,
    /// the kernel's name, or for a macro-built one the part before `##`
    name: String,
    /// macro-built kernels: the instantiated values of the macro's parameter (e.g. 64, 128)
    variants: Vec<String>,
    params: Vec<Param>,
}

/// Removes `//` and `/* */` comments and joins `\`-continued lines; string and character
/// literals are copied as they are (a `//` inside one is not a comment).
fn clean(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let b = src.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'"' || b[i] == b'\'' {
            let quote = b[i];
            let start = i;
            i += 1;
            while i < b.len() && b[i] != quote && b[i] != b'\n' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(b.len());
            out.push_str(&src[start..i]);
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                i += 1;
            }
            i += 2;
        } else if b[i] == b'\\' && b.get(i + 1) == Some(&b'\n') {
            out.push(' ');
            i += 2;
        } else {
            let ch = src[i..].chars().next().expect("in bounds");
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// `const float *__restrict__ x` → ("const float*", "x").
fn parse_param(text: &str, file: &str, kernel: &str) -> Result<Param, String> {
    let text = text.replace("__restrict__", " ").replace('*', " * ");
    let words: Vec<&str> = text.split_whitespace().collect();
    let (name, ty) = words
        .split_last()
        .filter(|(_, ty)| !ty.is_empty())
        .ok_or_else(|| format!("{file}: kernel `{kernel}`: cannot read parameter `{text}`"))?;
    let mut c_type = ty.join(" ");
    c_type = c_type.replace(" *", "*");
    Ok(Param {
        c_type,
        name: name.to_string(),
    })
}

/// The values `NAME(…)` is instantiated with, on the lines outside preprocessor directives
/// (every instantiation of a line, `M(64) M(128)` included).
fn macro_instances(text: &str, macro_name: &str) -> Vec<String> {
    let head = format!("{macro_name}(");
    let mut values = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut from = 0;
        while let Some(at) = line[from..].find(&head) {
            let start = from + at;
            from = start + head.len();
            let ident_before = line[..start]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
            if ident_before {
                continue;
            }
            if let Some(v) = line[from..].split(')').next().map(str::trim) {
                if !v.is_empty() && v.chars().all(|c| c.is_ascii_alphanumeric()) {
                    values.push(v.to_string());
                }
            }
        }
    }
    values
}

/// How many `#if`/`#ifdef`/`#ifndef` blocks are open at byte `at` of `text`.
fn conditional_depth(text: &str, at: usize) -> i32 {
    let mut depth = 0;
    for line in text[..at].lines() {
        let l = line.trim_start();
        if l.starts_with("#if") {
            depth += 1;
        } else if l.starts_with("#endif") {
            depth -= 1;
        }
    }
    depth
}

fn parse_kernels(file: &str, src: &str) -> Result<Vec<Kernel>, String> {
    let text = clean(src);
    let mut kernels = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("CADA_KERNEL") {
        let start = from + at;
        from = start + "CADA_KERNEL".len();
        let line_start = text[..start].rfind('\n').map_or(0, |p| p + 1);
        if text[line_start..start].trim() == "#define" {
            continue;
        }
        if !file.ends_with(".cu") {
            return Err(format!(
                "{file}: a CADA_KERNEL in a header: kernels live in kernels/*.cu, one module each"
            ));
        }
        let mut rest = text[from..].trim_start();
        rest = rest
            .strip_prefix("void")
            .ok_or_else(|| format!("{file}: a CADA_KERNEL that is not `void`"))?
            .trim_start();
        if let Some(after) = rest.strip_prefix("__launch_bounds__") {
            let close = after
                .find(')')
                .ok_or_else(|| format!("{file}: unclosed __launch_bounds__"))?;
            rest = after[close + 1..].trim_start();
        }
        let open = rest
            .find('(')
            .ok_or_else(|| format!("{file}: a CADA_KERNEL without a parameter list"))?;
        let full_name = rest[..open].trim().to_string();
        // a kernel under #if may or may not be compiled: its launcher and its entry in
        // names_in would then fail only at Cuda::new on a GPU
        if conditional_depth(&text, start) != 0 {
            return Err(format!(
                "{file}: kernel `{full_name}` is inside an #if/#ifdef block: the launcher \
                 generator cannot tell whether nvcc compiles it"
            ));
        }
        let close = rest[open..]
            .find(')')
            .ok_or_else(|| format!("{file}: kernel `{full_name}`: unclosed parameter list"))?;
        let params = rest[open + 1..open + close]
            .split(',')
            .map(|p| parse_param(p, file, &full_name))
            .collect::<Result<Vec<_>, _>>()?;
        let (name, variants) = match full_name.split_once("##") {
            None => (full_name.clone(), Vec::new()),
            Some((prefix, arg)) => {
                // the enclosing `#define MACRO(ARG)`, and the lines instantiating it
                let def = text[..start]
                    .rfind("#define ")
                    .map(|p| &text[p + "#define ".len()..])
                    .and_then(|d| d.split_once('('))
                    .filter(|(_, a)| a.split(')').next().map(str::trim) == Some(arg.trim()))
                    .map(|(m, _)| m.trim().to_string())
                    .ok_or_else(|| {
                        format!("{file}: kernel `{full_name}`: no enclosing #define with `{arg}`")
                    })?;
                let values = macro_instances(&text, &def);
                if values.is_empty() {
                    return Err(format!("{file}: macro `{def}` is never instantiated"));
                }
                (prefix.to_string(), values)
            }
        };
        kernels.push(Kernel {
            file: file.to_string(),
            name,
            variants,
            params,
        });
    }
    Ok(kernels)
}

/// `struct Name { int a, b; float c; };` → [("a", "int"), ("b", "int"), ("c", "float")].
fn parse_structs(file: &str, src: &str) -> Result<BTreeMap<String, Vec<(String, String)>>, String> {
    let text = clean(src);
    let mut structs = BTreeMap::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("struct ") {
        let start = from + at + "struct ".len();
        from = start;
        let Some(brace) = text[start..].find('{') else {
            break;
        };
        let name = text[start..start + brace].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let body_end = text[start + brace..]
            .find('}')
            .ok_or_else(|| format!("{file}: struct `{name}` is not closed"))?;
        let body = &text[start + brace + 1..start + brace + body_end];
        let mut fields = Vec::new();
        for decl in body.split(';').map(str::trim).filter(|d| !d.is_empty()) {
            let (ty, names) = decl
                .split_once(char::is_whitespace)
                .ok_or_else(|| format!("{file}: struct `{name}`: cannot read `{decl}`"))?;
            for field in names.split(',') {
                fields.push((field.trim().to_string(), ty.trim().to_string()));
            }
        }
        structs.insert(name.to_string(), fields);
    }
    Ok(structs)
}

/// `#define NAME 123` at the start of a line (a trailing comment allowed): the launch geometry
/// the kernels are written for (threads per block, rows per block, enum values), exported so
/// the Rust side uses the kernels' numbers instead of a copy of them.
fn parse_defines(file: &str, src: &str) -> Result<Vec<(String, i64)>, String> {
    let mut out = Vec::new();
    for d in clean(src)
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("#define "))
    {
        let mut words = d.split_whitespace();
        let (Some(name), Some(text)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(value) = text.parse::<i64>() else {
            continue;
        };
        if text.len() > 1 && text.starts_with('0') {
            return Err(format!(
                "{file}: `#define {name} {text}` is octal in C; write it in decimal"
            ));
        }
        let is_name = name
            .chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
        if words.next().is_none() && is_name {
            out.push((name.to_string(), value));
        }
    }
    Ok(out)
}

/// The Rust type of a scalar (struct field or by-value parameter).
fn scalar(c_type: &str) -> Option<&'static str> {
    Some(match c_type {
        "int" => "i32",
        "unsigned int" | "unsigned" => "u32",
        "int64_t" => "i64",
        "float" => "f32",
        _ => return None,
    })
}

/// The Rust element type of a pointer's pointee. `uint16_t` is bf16 bits: the mma attention
/// reads its bf16 operands as raw 16-bit words (for ldmatrix), the host passes `CudaSlice<bf16>`.
fn element(c_type: &str) -> Option<&'static str> {
    Some(match c_type {
        "float" => "f32",
        "double" => "f64",
        "unsigned int" | "unsigned" => "u32",
        "__nv_bfloat16" | "uint16_t" => "bf16",
        _ => return None,
    })
}

/// The Rust parameter type for a kernel parameter, or an error naming it.
fn rust_param(
    k: &Kernel,
    p: &Param,
    structs: &BTreeMap<String, Vec<(String, String)>>,
) -> Result<String, String> {
    let unknown = || {
        format!(
            "{}: kernel `{}`: parameter `{} {}` has a type the launcher generator does not know \
             (build/launchers.rs)",
            k.file, k.name, p.c_type, p.name
        )
    };
    if let Some(pointee) = p.c_type.strip_suffix('*') {
        let (konst, pointee) = match pointee.strip_prefix("const ") {
            Some(t) => (true, t),
            None => (false, pointee),
        };
        let elem = element(pointee.trim()).ok_or_else(unknown)?;
        return Ok(if konst {
            format!("&impl DevicePtr<{elem}>")
        } else {
            format!("&mut impl DevicePtrMut<{elem}>")
        });
    }
    if let Some(s) = scalar(&p.c_type) {
        return Ok(format!("&{s}"));
    }
    if structs.contains_key(&p.c_type) {
        return Ok(format!("&{}", p.c_type));
    }
    Err(unknown())
}

/// Parses every `(file name, source)` and returns the generated Rust, or the first error.
pub fn generate(sources: &[(String, String)]) -> Result<String, String> {
    let mut kernels = Vec::new();
    let mut structs: BTreeMap<String, (String, Vec<(String, String)>)> = BTreeMap::new();
    let mut defines: BTreeMap<String, (String, i64)> = BTreeMap::new();
    for (file, src) in sources {
        kernels.extend(parse_kernels(file, src)?);
        for (name, value) in parse_defines(file, src)? {
            match defines.get(&name) {
                Some((first, v)) if *v != value => {
                    return Err(format!(
                        "`#define {name}` is {v} in {first} but {value} in {file}"
                    ))
                }
                Some(_) => {}
                None => {
                    defines.insert(name, (file.clone(), value));
                }
            }
        }
        for (name, fields) in parse_structs(file, src)? {
            if let Some((first, seen)) = structs.get(&name) {
                if *seen != fields {
                    return Err(format!(
                        "struct `{name}` is defined differently in {first} and {file}"
                    ));
                }
            } else {
                structs.insert(name, (file.clone(), fields));
            }
        }
    }
    let by_value: BTreeMap<String, Vec<(String, String)>> = structs
        .into_iter()
        .filter(|(name, _)| {
            kernels
                .iter()
                .any(|k| k.params.iter().any(|p| &p.c_type == name))
        })
        .map(|(name, (_, fields))| (name, fields))
        .collect();

    let mut out = String::from(
        "// Generated by build/launchers.rs from kernels/*.cu: do not edit.\n\
         use super::Cuda;\n\
         use anyhow::{anyhow, Result};\n\
         use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg};\n\
         #[allow(unused_imports)]\n\
         use half::bf16;\n\n",
    );
    out.push_str(
        "/// The kernels' integer `#define`s (threads and rows per block, enum values).\n\
         #[allow(dead_code)]\npub(crate) mod defines {\n",
    );
    for (name, (file, value)) in &defines {
        writeln!(
            out,
            "    /// `{file}`\n    pub(crate) const {name}: i64 = {value};"
        )
        .unwrap();
    }
    out.push_str("}\n\n");
    for (name, fields) in &by_value {
        writeln!(
            out,
            "/// `struct {name}` of the kernel files, field for field."
        )
        .unwrap();
        writeln!(
            out,
            "#[repr(C)]\n#[derive(Clone, Copy, Debug)]\npub(crate) struct {name} {{"
        )
        .unwrap();
        for (field, ty) in fields {
            let rust = scalar(ty).ok_or_else(|| {
                format!("struct `{name}`: field `{ty} {field}` is not a 4- or 8-byte scalar")
            })?;
            writeln!(out, "    pub {field}: {rust},").unwrap();
        }
        writeln!(out, "}}").unwrap();
        writeln!(
            out,
            "// SAFETY: #[repr(C)] with the C struct's scalar fields in its order.\n\
             unsafe impl DeviceRepr for {name} {{}}\n"
        )
        .unwrap();
    }
    // what Cuda::new loads from each module: every kernel, a macro-built one once per variant
    let mut by_module: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for k in &kernels {
        let stem = k
            .file
            .trim_start_matches("kernels/")
            .trim_end_matches(".cu")
            .to_string();
        let names = by_module.entry(stem).or_default();
        if k.variants.is_empty() {
            names.push(k.name.clone());
        } else {
            names.extend(k.variants.iter().map(|v| format!("{}{v}", k.name)));
        }
    }
    out.push_str(
        "/// The kernels of each kernel file (`kernels/<module>.cu`), in source order; macro-built\n\
         /// ones once per instantiation.\n\
         pub(super) fn names_in(module: &str) -> &'static [&'static str] {\n    match module {\n",
    );
    for (module, names) in &by_module {
        let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        writeln!(out, "        {module:?} => &[{}],", quoted.join(", ")).unwrap();
    }
    out.push_str("        _ => &[],\n    }\n}\n\n");
    const RESERVED: [&str; 7] = ["cuda", "variant", "cfg", "name", "stream", "builder", "f"];
    for k in &kernels {
        if let Some(p) = k
            .params
            .iter()
            .find(|p| RESERVED.contains(&p.name.as_str()))
        {
            return Err(format!(
                "{}: kernel `{}`: a parameter may not be called `{}` (the generated launcher uses \
                 that name)",
                k.file, k.name, p.name
            ));
        }
    }
    for k in &kernels {
        let signature: Vec<String> = k
            .params
            .iter()
            .map(|p| format!("{} {}", p.c_type, p.name))
            .collect();
        writeln!(
            out,
            "/// `{}`: `{}({})`",
            k.file,
            k.name,
            signature.join(", ")
        )
        .unwrap();
        if !k.variants.is_empty() {
            writeln!(
                out,
                "/// One kernel per `variant`: {}.",
                k.variants.join(", ")
            )
            .unwrap();
        }
        writeln!(out, "#[allow(clippy::too_many_arguments)]").unwrap();
        write!(out, "pub(super) fn {}(\n    cuda: &Cuda,\n", k.name).unwrap();
        if !k.variants.is_empty() {
            out.push_str("    variant: usize,\n");
        }
        out.push_str("    cfg: LaunchConfig,\n");
        for p in &k.params {
            writeln!(out, "    {}: {},", p.name, rust_param(k, p, &by_value)?).unwrap();
        }
        out.push_str(") -> Result<()> {\n");
        if k.variants.is_empty() {
            writeln!(out, "    let name = {:?};", k.name).unwrap();
        } else {
            out.push_str("    let name = match variant {\n");
            for v in &k.variants {
                writeln!(out, "        {v} => {:?},", format!("{}{v}", k.name)).unwrap();
            }
            writeln!(
                out,
                "        _ => return Err(anyhow!(\"cuda backend: no kernel `{}{{variant}}` ({} \
                 builds {})\")),\n    }};",
                k.name,
                k.file,
                k.variants.join(", ")
            )
            .unwrap();
        }
        out.push_str("    let stream = &cuda.stream;\n");
        // pointers first, each with the guard that orders it on the stream until after launch
        for p in &k.params {
            if p.c_type.ends_with('*') {
                let call = if p.c_type.starts_with("const ") {
                    "device_ptr"
                } else {
                    "device_ptr_mut"
                };
                writeln!(
                    out,
                    "    let ({0}, _{0}_sync) = {0}.{call}(stream);",
                    p.name
                )
                .unwrap();
            }
        }
        out.push_str(
            "    let f = cuda.function(name)?;\n    let mut builder = stream.launch_builder(f);\n",
        );
        for p in &k.params {
            let by_ref = if p.c_type.ends_with('*') { "&" } else { "" };
            writeln!(out, "    builder.arg({by_ref}{});", p.name).unwrap();
        }
        out.push_str(
            "    // SAFETY: the arguments are the kernel's parameters, in its order, with its types\n    \
             // (generated from its source); the caller checks that every buffer covers what the\n    \
             // kernel indexes.\n    \
             unsafe { builder.launch(cfg) }\n        .map(|_| ())\n        \
             .map_err(|e| anyhow!(\"cuda backend: launching `{name}`: {e:?}\"))\n}\n\n",
        );
    }
    Ok(out)
}
