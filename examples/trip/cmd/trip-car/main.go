// Command trip-car is the trip example's car worker: it books and cancels
// car bookings (package booking). Configuration: the environment, as for
// every sagaflow worker (trip-car -help lists it).
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
		Name:        "car",
		Summary:     "the trip example's car worker: car bookings",
		Queue:       trip.CarQueue,
		MetricsAddr: ":9203",
		Topology:    trip.Topology,
		Migrations:  []pgmigrate.Set{booking.Migrations},
		IDName:      trip.IDName,
		Register:    booking.Car.Register,
		DBConns:     4,
	}))
}
