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
// the message count, then per message its kind (a byte), its strings and
// bytes each prefixed by a uvarint length, its priority, TTL (ms) and
// timestamp (Unix ns) as varints, and its headers as a count and key/value
// pairs. Bodies are opaque bytes.
//
// Compression is for the write-ahead log: the outbox row is a third of
// what a saga writes to it, and its JSON shrinks about sixfold, so most
// rows stay small enough to be stored inline instead of in TOAST chunks.
//
// Versions 1 (plain) and 2 (zstd), left by an older release, framed each
// message with its AMQP exchange, routing key and reply_to instead of its
// kind and key: they still decode, their addresses read back as kinds.
const (
	codecPlain     = 1
	codecZstd      = 2
	codecZstdKinds = 3
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
	return zenc.EncodeAll(f, append(make([]byte, 0, 1+len(f)/4), codecZstdKinds))
}

func decodeMessages(b []byte) ([]saga.Message, error) {
	if len(b) == 0 {
		return nil, errCorrupt
	}
	switch b[0] {
	case codecPlain:
		return decodeFrame(b[1:], true)
	case codecZstd, codecZstdKinds:
		f, err := zdec.DecodeAll(b[1:], nil)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", errCorrupt, err)
		}
		return decodeFrame(f, b[0] == codecZstd)
	}
	return nil, errCorrupt
}

// kindOfAddress reads the AMQP address a version 1 or 2 row kept as a
// message kind: what the engine then sent to the command exchange carried
// the reply queue as reply_to, events did not, and a message to the
// default exchange was addressed to a queue by its routing key.
func kindOfAddress(exchange, routingKey, replyTo string) (saga.MessageKind, string) {
	switch {
	case exchange == "":
		return saga.MessageReply, routingKey
	case replyTo != "":
		return saga.MessageCommand, ""
	}
	return saga.MessageEvent, ""
}

// appendFrame appends msgs, framed, to b.
func appendFrame(b []byte, msgs []saga.Message) []byte {
	size := 0
	for i := range msgs {
		size += 64 + len(msgs[i].Body) + len(msgs[i].Key) + len(msgs[i].MessageID) +
			len(msgs[i].CorrelationID) + len(msgs[i].Type)
		for k, v := range msgs[i].Headers {
			size += len(k) + len(v) + 4
		}
	}
	b = slices.Grow(b, size)
	b = binary.AppendUvarint(b, uint64(len(msgs)))
	str := func(s string) { b = binary.AppendUvarint(b, uint64(len(s))); b = append(b, s...) }
	for i := range msgs {
		m := &msgs[i]
		b = append(b, byte(m.Kind))
		str(m.Type)
		str(m.Key)
		str(m.MessageID)
		str(m.CorrelationID)
		b = append(b, byte(m.Priority))
		b = binary.AppendVarint(b, m.TTL.Milliseconds())
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

// decodeFrame reads a frame; addressed (versions 1 and 2) frames carry
// AMQP addresses where newer ones carry a kind and a key.
func decodeFrame(b []byte, addressed bool) ([]saga.Message, error) {
	r := &reader{b: b}
	n := r.uvarint()
	if r.err != nil || n > uint64(len(b)) {
		return nil, errCorrupt
	}
	out := make([]saga.Message, 0, n)
	for range n {
		var m saga.Message
		if addressed {
			exchange, routingKey := string(r.bytes()), string(r.bytes())
			m.MessageID = string(r.bytes())
			m.CorrelationID = string(r.bytes())
			replyTo := string(r.bytes())
			m.Type = string(r.bytes())
			m.Kind, m.Key = kindOfAddress(exchange, routingKey, replyTo)
		} else {
			m.Kind = saga.MessageKind(r.byte())
			m.Type = string(r.bytes())
			m.Key = string(r.bytes())
			m.MessageID = string(r.bytes())
			m.CorrelationID = string(r.bytes())
		}
		m.Priority = saga.Priority(r.byte())
		m.TTL = time.Duration(r.varint()) * time.Millisecond
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
