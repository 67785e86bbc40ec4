package pgstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/sagaflow/sagaflow/saga"
)

// The outbox keeps a transaction's messages in one bytea: a version byte,
// then the frame, compressed with zstd since version 2. The frame holds
// the message count, then per message its strings and bytes each prefixed
// by a uvarint length, its priority, expiration (ms) and timestamp (Unix
// ns) as varints, and its headers as a count and key/value pairs. Bodies
// are opaque bytes.
//
// Compression is for the write-ahead log: the outbox row is a third of
// what a saga writes to it, and its JSON shrinks about sixfold, so most
// rows stay small enough to be stored inline instead of in TOAST chunks.
// Version 1 (uncompressed) rows, left by an older release, still decode.
const (
	codecPlain = 1
	codecZstd  = 2
)

// maxFrame bounds a decompressed frame: far above any batch's messages
// (BatchSize × a few messages of a few kB), far below harm.
const maxFrame = 64 << 20

var errCorrupt = errors.New("corrupt outbox payload")

// zenc and zdec are safe for concurrent EncodeAll and DecodeAll. Their
// options are constants: an error here is a programming error.
var (
	zenc = must(zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithLowerEncoderMem(true)))
	zdec = must(zstd.NewReader(nil, zstd.WithDecoderMaxMemory(maxFrame), zstd.WithDecoderLowmem(true)))
)

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func encodeMessages(msgs []saga.Message) []byte {
	f := appendFrame(nil, msgs)
	return zenc.EncodeAll(f, append(make([]byte, 0, 1+len(f)/4), codecZstd))
}

func decodeMessages(b []byte) ([]saga.Message, error) {
	if len(b) == 0 {
		return nil, errCorrupt
	}
	switch b[0] {
	case codecPlain:
		return decodeFrame(b[1:])
	case codecZstd:
		f, err := zdec.DecodeAll(b[1:], nil)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errCorrupt, err)
		}
		return decodeFrame(f)
	}
	return nil, errCorrupt
}

// appendFrame appends msgs, framed, to b.
func appendFrame(b []byte, msgs []saga.Message) []byte {
	size := 0
	for i := range msgs {
		size += 64 + len(msgs[i].Body) + len(msgs[i].Exchange) + len(msgs[i].RoutingKey) + len(msgs[i].MessageID) +
			len(msgs[i].CorrelationID) + len(msgs[i].ReplyTo) + len(msgs[i].Type)
		for k, v := range msgs[i].Headers {
			size += len(k) + len(v) + 4
		}
	}
	b = slices.Grow(b, size)
	b = binary.AppendUvarint(b, uint64(len(msgs)))
	str := func(s string) { b = binary.AppendUvarint(b, uint64(len(s))); b = append(b, s...) }
	for i := range msgs {
		m := &msgs[i]
		str(m.Exchange)
		str(m.RoutingKey)
		str(m.MessageID)
		str(m.CorrelationID)
		str(m.ReplyTo)
		str(m.Type)
		b = append(b, byte(m.Priority))
		b = binary.AppendVarint(b, m.Expiration.Milliseconds())
		var ts int64 // zero: none (UnixNano of the zero time overflows)
		if !m.Timestamp.IsZero() {
			ts = m.Timestamp.UnixNano()
		}
		b = binary.AppendVarint(b, ts)
		b = binary.AppendUvarint(b, uint64(len(m.Headers)))
		for k, v := range m.Headers {
			str(k)
			str(v)
		}
		b = binary.AppendUvarint(b, uint64(len(m.Body)))
		b = append(b, m.Body...)
	}
	return b
}

type reader struct {
	b   []byte
	err error
}

func (r *reader) uvarint() uint64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	if r.err != nil {
		return 0
	}
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.err = errCorrupt
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) bytes() []byte {
	n := r.uvarint()
	if r.err != nil || uint64(len(r.b)) < n {
		r.err = errCorrupt
		return nil
	}
	v := r.b[:n:n]
	r.b = r.b[n:]
	return v
}

func (r *reader) byte() byte {
	if r.err != nil || len(r.b) == 0 {
		r.err = errCorrupt
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func decodeFrame(b []byte) ([]saga.Message, error) {
	r := &reader{b: b}
	n := r.uvarint()
	if r.err != nil || n > uint64(len(b)) {
		return nil, errCorrupt
	}
	out := make([]saga.Message, 0, n)
	for range n {
		var m saga.Message
		m.Exchange = string(r.bytes())
		m.RoutingKey = string(r.bytes())
		m.MessageID = string(r.bytes())
		m.CorrelationID = string(r.bytes())
		m.ReplyTo = string(r.bytes())
		m.Type = string(r.bytes())
		m.Priority = saga.Priority(r.byte())
		m.Expiration = time.Duration(r.varint()) * time.Millisecond
		if ts := r.varint(); ts != 0 {
			m.Timestamp = time.Unix(0, ts).UTC()
		}
		if h := r.uvarint(); h > 0 && r.err == nil {
			if h > uint64(len(r.b)) {
				return nil, errCorrupt
			}
			m.Headers = make(map[string]string, h)
			for range h {
				k := string(r.bytes())
				m.Headers[k] = string(r.bytes())
			}
		}
		m.Body = r.bytes()
		if r.err != nil {
			return nil, r.err
		}
		out = append(out, m)
	}
	if len(r.b) != 0 {
		return nil, errCorrupt
	}
	return out, nil
}
