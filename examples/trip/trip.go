// Package trip is a second saga built on sagaflow's public packages, as a
// team outside the repository would build it: book a hotel, a flight and
// a car for a traveller, confirm the hotel, then wait for the traveller to
// check in; if a booking is refused, cancel the ones made.
// docs/writing-a-saga.md walks through it.
//
// The saga (this file) is a definition and a topology. Three workers
// (cmd/trip-hotel, cmd/trip-flight, cmd/trip-car) keep bookings in tables
// of their own (package booking), and an orchestrator (cmd/trip-orchestrator)
// drives the sagas and serves a small REST API: POST /trips, GET
// /trips/{id}, POST /trips/{id}/checkin.
package trip

import (
	"encoding/json"
	"errors"
	"strings"
	"time"

	"github.com/sagaflow/sagaflow/saga"
	"github.com/sagaflow/sagaflow/saga/amqpbus"
)

// SagaName is the definition's name: trips are listed under it.
const SagaName = "trip"

// IDName is the name of a saga id in log lines: the trip id.
const IDName = "trip_id"

// Commands, also the routing keys on the command exchange.
const (
	HotelBook    = "hotel.book"
	HotelConfirm = "hotel.confirm"
	HotelCancel  = "hotel.cancel"
	FlightBook   = "flight.book"
	FlightCancel = "flight.cancel"
	CarBook      = "car.book"
	CarCancel    = "car.cancel"
)

// CheckedIn is the signal the last step waits for: the traveller checked
// in at the hotel. It comes from the API (POST /trips/{id}/checkin) or from
// the bus, as a signal of this name for the trip (saga.SignalMessage: a
// hotel's system would publish it).
const CheckedIn = "hotel.checked_in"

// The workers' command queues.
const (
	HotelQueue  = "hotel.commands"
	FlightQueue = "flight.commands"
	CarQueue    = "car.commands"
)

// Definition is the trip saga. The three bookings can be undone, so they
// come first; once the car is booked (the pivot) the trip goes through:
// confirming the hotel is retried until it succeeds, then the trip waits
// for the check-in, up to checkIn; a traveller who never comes leaves the
// trip stuck for an operator.
func Definition(retry saga.Retry, checkIn time.Duration) *saga.Definition {
	return &saga.Definition{
		Name:   SagaName,
		IDName: IDName,
		Steps: []saga.Step{
			{
				Name: "book_hotel", State: "booking_hotel", Command: HotelBook, Kind: saga.Compensatable,
				Compensation:   &saga.Compensation{Name: "cancel_hotel", Command: HotelCancel, Event: "hotel.cancelled"},
				SucceededEvent: "hotel.booked", FailedEvent: "hotel.refused",
			},
			{
				Name: "book_flight", State: "booking_flight", Command: FlightBook, Kind: saga.Compensatable,
				Compensation:   &saga.Compensation{Name: "cancel_flight", Command: FlightCancel, Event: "flight.cancelled"},
				SucceededEvent: "flight.booked", FailedEvent: "flight.refused",
			},
			{
				Name: "book_car", State: "booking_car", Command: CarBook, Kind: saga.Compensatable,
				Compensation:   &saga.Compensation{Name: "cancel_car", Command: CarCancel, Event: "car.cancelled"},
				SucceededEvent: "car.booked", FailedEvent: "car.refused",
			},
			{Name: "confirm", State: "confirming", Command: HotelConfirm, Kind: saga.Retriable, SucceededEvent: "hotel.confirmed"},
			{
				Name: "await_checkin", State: "awaiting_checkin", Wait: CheckedIn, Kind: saga.Retriable, Timeout: checkIn,
				SucceededEvent: "trip.checked_in", OverdueEvent: "trip.checkin_overdue", OverdueReason: "the traveller did not check in",
			},
		},
		// The saga's data is the request merged with what the desks
		// answered (hotel_ref, ...); each command carries the request.
		Request: func(_ string, data json.RawMessage) (json.RawMessage, error) {
			var r Request
			if err := json.Unmarshal(data, &r); err != nil {
				return nil, err
			}
			return json.Marshal(r)
		},
		Retry: retry,
	}
}

// Topology is the trip system on the broker: the engine's exchanges and
// queues, and each worker's command queue bound by its commands.
func Topology(qt amqpbus.QueueType, deadLetterMax int64) amqpbus.Topology {
	o := amqpbus.QueueOptions{Type: qt}
	return amqpbus.SagaTopology(amqpbus.QueueOptions{Type: qt, MaxLength: deadLetterMax}).Merge(
		amqpbus.CommandQueue(HotelQueue, []string{HotelBook, HotelConfirm, HotelCancel}, o),
		amqpbus.CommandQueue(FlightQueue, []string{FlightBook, FlightCancel}, o),
		amqpbus.CommandQueue(CarQueue, []string{CarBook, CarCancel}, o),
	)
}

// Request is a trip to book: the saga's data, and the payload of each of
// its commands.
type Request struct {
	Traveller string `json:"traveller"`
	Hotel     struct {
		City   string `json:"city"`
		Nights int    `json:"nights"`
	} `json:"hotel"`
	Flight struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"flight"`
	Car struct {
		Class string `json:"class"`
	} `json:"car"`
}

// Validate reports what is missing.
func (r *Request) Validate() error {
	var errs []error
	if strings.TrimSpace(r.Traveller) == "" {
		errs = append(errs, errors.New("traveller is required"))
	}
	if r.Hotel.City == "" || r.Hotel.Nights < 1 {
		errs = append(errs, errors.New("hotel needs a city and at least one night"))
	}
	if r.Flight.From == "" || r.Flight.To == "" {
		errs = append(errs, errors.New("flight needs from and to"))
	}
	if r.Car.Class == "" {
		errs = append(errs, errors.New("car needs a class"))
	}
	return errors.Join(errs...)
}
