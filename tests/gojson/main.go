// Reads request bodies as Ollama's handlers read them, for the differential test of the
// proxy's model check (tests/unit/test_model_scan.py).
//
// Ollama binds a body with gin's ShouldBindJSON: one json.Decoder.Decode into the request
// struct (api.ChatRequest, api.GenerateRequest, api.ShowRequest, ...; the OpenAI and
// Anthropic layers do the same into their own structs). encoding/json matches a key to a
// field exactly or, failing that, without regard to case; a key seen twice overwrites the
// first; null leaves a string as it is; anything after the first value is never read.
//
// Input: bodies, each a 4-byte big-endian length and that many bytes. Output: one JSON line
// per body, {"ok": false} when decoding fails, else {"ok": true, "model": ..., "name": ...}.
package main

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"io"
	"os"
)

// The fields a body can name a model by: "model" everywhere, and "name" where ShowRequest
// (and the deprecated forms of others) still reads it.
type request struct {
	Model string `json:"model"`
	Name  string `json:"name"`
}

type answer struct {
	OK    bool   `json:"ok"`
	Model string `json:"model"`
	Name  string `json:"name"`
}

func main() {
	in := bufio.NewReader(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	encoder := json.NewEncoder(out)
	var size [4]byte
	for {
		if _, err := io.ReadFull(in, size[:]); err != nil {
			return
		}
		body := make([]byte, binary.BigEndian.Uint32(size[:]))
		if _, err := io.ReadFull(in, body); err != nil {
			return
		}
		var req request
		err := json.NewDecoder(bytes.NewReader(body)).Decode(&req)
		if err != nil {
			encoder.Encode(answer{OK: false})
		} else {
			encoder.Encode(answer{OK: true, Model: req.Model, Name: req.Name})
		}
	}
}
