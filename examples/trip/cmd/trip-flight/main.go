// Command trip-flight is the trip example's flight worker: it books and cancels
// flight bookings (package booking). Configuration: the environment, as for
// every sagaflow worker (trip-flight -help lists it).
package main

import (
	"os"

	"github.com/sagaflow/sagaflow/examples/trip"
	"github.com/sagaflow/sagaflow/examples/trip/booking"
	"github.com/sagaflow/sagaflow/saga/pgmigrate"
	"github.com/sagaflow/sagaflow/saga/service"
)

func main() {
	os.Exit(service.RunWorker(service.WorkerSpec{
		Name:        "flight",
		Summary:     "the trip example's flight worker: flight bookings",
		Queue:       trip.FlightQueue,
		MetricsAddr: ":9202",
		Topology:    trip.Topology,
		Migrations:  []pgmigrate.Set{booking.Migrations},
		IDName:      trip.IDName,
		Register:    booking.Flight.Register,
		DBConns:     4,
	}))
}
