"""Workers: lease trials from the service over HTTP, train Keras models, report back."""
