from django import forms
from django.contrib.auth.forms import UserCreationForm

from .models import User
from .usernames import username_skeleton


class SignUpForm(UserCreationForm):
    class Meta(UserCreationForm.Meta):
        model = User
        fields = ("username", "display_name")

    def clean_username(self):
        username = super().clean_username()
        if username is None:  # Django already reported "already exists"
            return username
        if User.objects.filter(username_skeleton=username_skeleton(username)).exists():
            raise forms.ValidationError(
                "That username is taken, or looks too much like one that is. Choose another.",
                code="username_confusable",
            )
        return username
