package amqpbus

import amqp "github.com/rabbitmq/amqp091-go"

// HeaderCarrier carries trace context (W3C traceparent, tracestate) in AMQP
// message headers. It implements OpenTelemetry's TextMapCarrier, for
// propagation.TextMapPropagator.Inject and Extract; no AMQP carrier ships
// with OpenTelemetry.
type HeaderCarrier amqp.Table

// Get returns a header's value, or "" when it is absent or not a string.
func (c HeaderCarrier) Get(key string) string {
	v, _ := c[key].(string)
	return v
}

// Set sets a header.
func (c HeaderCarrier) Set(key, value string) { c[key] = value }

// Keys lists the headers.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
