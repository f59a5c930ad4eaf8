//! Reading and writing safetensors checkpoints with checkpoint names, and the naming scheme of
//! each supported model type.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};

/// A checkpoint file's bytes: memory-mapped where the platform allows it (read into memory
/// otherwise, e.g. in WebAssembly). Loading from a mapping lets the pages of a tensor that was
/// converted into its in-memory form be released at once ([`MappedFile::release`]), so that
/// loading does not hold the whole file and the whole model in memory together, and lets a
/// table that is only looked up (the int8 word table) stay in the file: its rows are read on
/// demand ([`MappedFile::read_at`]).
pub struct MappedFile {
    path: PathBuf,
    bytes: FileBytes,
}

enum FileBytes {
    Mapped {
        map: memmap2::Mmap,
        /// The open file, for positioned reads (Unix; elsewhere rows are copied from `map`).
        #[cfg_attr(not(unix), allow(dead_code))]
        file: std::fs::File,
    },
    Read(Vec<u8>),
}

impl MappedFile {
    /// Maps `path` read-only (or reads it where mapping fails).
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only and private. Rust's aliasing rules would be broken
        // if another process truncated or rewrote the file in place while it is mapped; prefine
        // itself never does (every checkpoint is written to a new file and renamed over the
        // old one, which leaves a mapped inode intact), and the same caveat holds for every
        // mmap-based loader (safetensors, candle, llama.cpp).
        let bytes = match unsafe { memmap2::Mmap::map(&file) } {
            Ok(map) => FileBytes::Mapped { map, file },
            Err(_) => FileBytes::Read(std::fs::read(path).map_err(|e| Error::io(path, e))?),
        };
        Ok(Self {
            path: path.to_path_buf(),
            bytes,
        })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        match &self.bytes {
            FileBytes::Mapped { map, .. } => map,
            FileBytes::Read(v) => v,
        }
    }

    /// Whether the bytes are a mapping of the file.
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, FileBytes::Mapped { .. })
    }

    /// Fills `buf` with the bytes at `offset`. From a mapped file this is a positioned read
    /// (served by the OS's page cache) rather than a touch of the mapping: touching a mapped
    /// page makes it, and with large page-cache folios up to hundreds of KiB around it,
    /// resident in this process, which a few hundred token lookups would spread over most of
    /// a word table.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) -> Result<()> {
        let end = offset
            .checked_add(buf.len())
            .filter(|&e| e <= self.bytes().len());
        let Some(end) = end else {
            return Err(Error::io(
                &self.path,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("{} bytes at {offset} overrun the file", buf.len()),
                ),
            ));
        };
        #[cfg(unix)]
        if let FileBytes::Mapped { file, .. } = &self.bytes {
            use std::os::unix::fs::FileExt;
            return file
                .read_exact_at(buf, offset as u64)
                .map_err(|e| Error::io(&self.path, e));
        }
        buf.copy_from_slice(&self.bytes()[offset..end]);
        Ok(())
    }

    /// Drops the resident pages under `part` (a sub-slice of [`MappedFile::bytes`] that has
    /// been copied out): they leave the process's memory and are read from the file again if
    /// touched. Does nothing for bytes read into memory, or off Unix.
    pub fn release(&self, part: &[u8]) {
        #[cfg(unix)]
        if let FileBytes::Mapped { map, .. } = &self.bytes {
            let start = (part.as_ptr() as usize).wrapping_sub(map.as_ptr() as usize);
            if part.is_empty() || start >= map.len() || start + part.len() > map.len() {
                return;
            }
            // SAFETY: the mapping is read-only and private and never written, so its pages
            // always equal the file's: MADV_DONTNEED only drops resident copies, and a later
            // read faults the same bytes back in from the file. No reference is invalidated
            // (the addresses stay mapped). memmap2 widens the range down to a page boundary,
            // which touches only the same read-only mapping.
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, part.len())
            };
        }
        #[cfg(not(unix))]
        let _ = part;
    }
}

/// Loads every tensor of a safetensors file (f32/f16/bf16 converted to f32).
pub fn load_safetensors(path: &Path) -> Result<HashMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_safetensors_bytes(&bytes, path)
}

/// [`load_safetensors`] over the file's bytes already in memory; `path` names it in errors.
pub fn load_safetensors_bytes(bytes: &[u8], path: &Path) -> Result<HashMap<String, Tensor>> {
    let tensors =
        candle_core::safetensors::load_buffer(bytes, &Device::Cpu).map_err(|e| Error::Weights {
            path: path.to_path_buf(),
            reason: format!("not a readable safetensors file ({e})"),
        })?;
    let mut out = HashMap::with_capacity(tensors.len());
    for (k, t) in tensors {
        let t = if t.dtype().is_float() {
            let t = t.to_dtype(candle_core::DType::F32)?;
            check_finite(path, &k, &t)?;
            t
        } else {
            t
        };
        out.insert(k, t);
    }
    Ok(out)
}

/// Rejects a float tensor holding NaN or an infinity: such weights would only surface later as
/// a non-finite loss, far from their cause.
fn check_finite(path: &Path, name: &str, t: &Tensor) -> Result<()> {
    let values = t.flatten_all()?.to_vec1::<f32>()?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        let bad = values.iter().filter(|v| !v.is_finite()).count();
        return Err(Error::Weights {
            path: path.to_path_buf(),
            reason: format!(
                "tensor {name} holds {bad} NaN or infinite value(s) (first at flat index {i}: {})",
                values[i]
            ),
        });
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Serialises named tensors to safetensors bytes and writes them atomically.
pub fn save_safetensors(path: &Path, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    let mut views = Vec::with_capacity(tensors.len());
    let mut datas = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_dtype(candle_core::DType::F32)?.contiguous()?;
        let v: Vec<f32> = t.flatten_all()?.to_vec1()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        datas.push((name.clone(), t.dims().to_vec(), bytes));
    }
    for (name, shape, bytes) in &datas {
        let view =
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map_err(|e| Error::Weights {
                    path: path.to_path_buf(),
                    reason: format!("{name}: {e}"),
                })?;
        views.push((name.clone(), view));
    }
    let mut meta = HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|source| Error::Safetensors {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_weights_are_rejected_with_the_tensor_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.safetensors");
        let mut t = BTreeMap::new();
        t.insert(
            "ok".to_string(),
            Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(),
        );
        t.insert(
            "bad".to_string(),
            Tensor::new(&[0f32, f32::NAN, f32::INFINITY], &Device::Cpu).unwrap(),
        );
        save_safetensors(&path, &t).unwrap();
        let msg = load_safetensors(&path).unwrap_err().to_string();
        assert!(msg.contains("w.safetensors"), "{msg}");
        assert!(
            msg.contains(
                "tensor bad holds 2 NaN or infinite value(s) (first at flat index 1: NaN)"
            ),
            "{msg}"
        );
        t.remove("bad");
        save_safetensors(&path, &t).unwrap();
        assert_eq!(load_safetensors(&path).unwrap().len(), 1);
    }
}
