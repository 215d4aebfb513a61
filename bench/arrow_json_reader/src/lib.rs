//! Benchmark only (bench/reader_bench.py): arrow-rs's `arrow-json` decoder reading a batch of
//! newline-joined messages into one Arrow struct array, handed to pyarrow through the Arrow C
//! data interface (Python allocates the two C structs; this fills them).

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{Array, StructArray};
use arrow_json::ReaderBuilder;
use arrow_schema::{DataType, Schema};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use std::sync::Arc;

/// Read `blob` with the schema at `schema_in` (an exported pyarrow schema); write the result
/// into the C structs at `array_out` / `schema_out`. Errors (unknown field, wrong type,
/// bad JSON) raise ValueError.
#[pyfunction]
fn read(blob: &[u8], schema_in: usize, array_out: usize, schema_out: usize, strict: bool) -> PyResult<usize> {
    let ffi_schema = unsafe { &*(schema_in as *const FFI_ArrowSchema) };
    let schema = Schema::try_from(ffi_schema).map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut decoder = ReaderBuilder::new(Arc::new(schema))
        .with_batch_size(1 << 20)
        .with_strict_mode(strict)
        .build_decoder()
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    let mut pos = 0;
    while pos < blob.len() {
        let used = decoder.decode(&blob[pos..]).map_err(|e| PyValueError::new_err(e.to_string()))?;
        if used == 0 {
            break;
        }
        pos += used;
    }
    let batch = decoder
        .flush()
        .map_err(|e| PyValueError::new_err(e.to_string()))?
        .ok_or_else(|| PyValueError::new_err("no rows"))?;
    let rows = batch.num_rows();
    let arr: StructArray = batch.into();
    let data = arr.into_data();
    let out_schema = FFI_ArrowSchema::try_from(DataType::Struct(match data.data_type() {
        DataType::Struct(f) => f.clone(),
        _ => unreachable!(),
    }))
    .map_err(|e| PyValueError::new_err(e.to_string()))?;
    unsafe {
        std::ptr::write(array_out as *mut FFI_ArrowArray, FFI_ArrowArray::new(&data));
        std::ptr::write(schema_out as *mut FFI_ArrowSchema, out_schema);
    }
    Ok(rows)
}

#[pymodule]
fn _arrow_json_reader(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(read, m)?)?;
    Ok(())
}
