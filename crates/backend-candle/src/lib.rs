//! llama-family models (GGUF quantized, safetensors) on candle, with a preallocated,
//! truncatable KV cache, the GGUF tokenizer and chat template. (Lands with issue 4.)
