"""Copy a GGUF file with edited metadata, with or without its tensors: the one helper of
the reference scripts that write variants of a file (a merge added for llama.cpp's
loader, a declared window, a vocabulary-only copy, a Gemma-style vocabulary).

`gguf` is the package of llama.cpp's sdist (see make_gguf.py), passed in by the caller
after it put `LLAMA_CPP/gguf-py` on the path."""

DROP = object()


def copy_gguf(gguf, src, dst, edit=None, extra=(), tensors=True):
    """Write `dst`: `src`'s metadata, each value passed through `edit(name, value)`
    (return `DROP` to leave the key out), then the `(name, value, type)` entries of
    `extra`, then `src`'s tensors unless `tensors` is false."""
    r = gguf.GGUFReader(src, "r")
    w = gguf.GGUFWriter(dst, arch=r.fields[gguf.Keys.General.ARCHITECTURE].contents(), endianess=r.endianess)
    for field in r.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        value = field.contents()
        if edit is not None:
            value = edit(field.name, value)
        if value is DROP:
            continue
        kind = field.types[0]
        sub = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(field.name, value, kind, sub_type=sub)
    for name, value, kind in extra:
        sub = gguf.GGUFValueType.STRING if kind == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, value, kind, sub_type=sub)
    if tensors:
        for t in r.tensors:
            w.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    if tensors:
        for t in r.tensors:
            w.write_tensor_data(t.data, tensor_endianess=r.endianess)
    w.close()
